"""Pieces shared by the heads and their networks, and what a head declares about itself."""

from __future__ import annotations

import math

import torch
from torch import nn


class ActionHead(nn.Module):
    """Base of action heads (`loss` / `sample`, see robopolicy.policy.heads). What differs
    between heads is declared here rather than read off their names or attributes:
      supports_prefix       `sample` honours a committed prefix (real-time chunking, inpainting)
      default_action_norm   how actions are normalized unless `policy.action_norm` says otherwise
      inference_networks()  the modules that run at every chunk, for accelerators to compile
    """

    supports_prefix: bool = True
    default_action_norm: str = "min_max"  # the [-1, 1] range diffusion and flow sample in

    def inference_networks(self) -> list[nn.Module]:
        raise NotImplementedError


class SinusoidalEmbedding(nn.Module):
    """Scalar (diffusion step or flow time) -> (B, dim) sin/cos features, as in transformers."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def masked_mean(values: torch.Tensor, is_pad: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, H, A) values over the steps that are real actions (not episode padding)."""
    if is_pad is None:
        return values.mean()
    keep = (~is_pad).unsqueeze(-1).to(values.dtype)
    return (values * keep).sum() / (keep.sum() * values.shape[-1]).clamp(min=1.0)


def as_prefix_mask(prefix: torch.Tensor | None, prefix_mask: torch.Tensor | None, like: torch.Tensor):
    """Normalize the prefix arguments to full-length (B, H, A) values and a (B, H, 1) mask, or Nones.

    A prefix shorter than the chunk means "the first K steps".
    """
    if prefix is None:
        return None, None
    b, h, a = like.shape
    if prefix.dim() == 2:
        prefix = prefix.unsqueeze(0).expand(b, -1, -1)
    if prefix_mask is None:
        k = prefix.shape[1]
        if k > h:
            raise ValueError(f"prefix has {k} steps, the chunk only {h}")
        full = like.new_zeros(b, h, a)
        full[:, :k] = prefix.to(like.dtype)
        mask = torch.zeros(b, h, dtype=torch.bool, device=like.device)
        mask[:, :k] = True
        return full, mask.unsqueeze(-1)
    if prefix_mask.dim() == 1:
        prefix_mask = prefix_mask.unsqueeze(0).expand(b, -1)
    return prefix.to(like.dtype), prefix_mask.to(like.device).bool().unsqueeze(-1)
