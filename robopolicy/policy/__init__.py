"""Policies: normalizer + observation encoder + action head, saved as safetensors + JSON."""
