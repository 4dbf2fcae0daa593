"""Batch-1 CPU inference with the camera trunks in bf16 (opt-in: `compile_for_inference(vision_bf16=True)`).

Why: on CPUs with AMX / AVX512-BF16, oneDNN's bf16 convolutions in channels_last run a ResNet-18
over a chunk's images ~1.5x faster than fp32 (eager or ONNX Runtime) — the encoder is the largest
single part of a CPU chunk (bench/RESULTS.md, `bench/bench_cpu_inference.py`). The price is bf16
rounding in the image features: chunks differ from the fp32 policy by ~1e-3 of the action range, so
it is a choice, not the default (a policy trained with bf16 autocast saw the same rounding).

How: each camera encoder's `forward` is replaced, on that instance only, by a call into a bf16,
channels_last copy of its trunk; the keypoint pooling and the projection stay fp32. The module's own
fp32 weights are untouched, so a compiled policy still saves the checkpoint it was loaded from.
"""

from __future__ import annotations

import copy

import torch

from robopolicy.errors import ConfigError
from robopolicy.policy.encoders.vision import CameraEncoder
from robopolicy.system import cpu_supports_bf16


class Bf16TrunkForward:
    """What a camera encoder's `forward` becomes: trunk in bf16 (a copy), keypoints and projection fp32."""

    def __init__(self, encoder: CameraEncoder):
        self.encoder = encoder
        self.trunk = copy.deepcopy(encoder.trunk).eval().to(dtype=torch.bfloat16, memory_format=torch.channels_last)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.encoder.training:
            raise ConfigError("the camera encoder was compiled for inference with a bf16 trunk; it cannot train")
        features = self.trunk(images.to(dtype=torch.bfloat16, memory_format=torch.channels_last)).float()
        return self.encoder.project(self.encoder.pool(features))


def compile_camera_encoder_bf16(encoder: CameraEncoder) -> None:
    if not cpu_supports_bf16():
        raise ConfigError("vision_bf16 needs a CPU with AVX512-BF16 or AMX (this one has neither; without them"
                          " bf16 convolutions are slower than fp32): compile without it")
    encoder.forward = Bf16TrunkForward(encoder)
