"""Batch-1 CPU inference with the camera trunks in bf16 (opt-in: `compile_for_inference(vision_bf16=True)`).

Why: the camera encoder is the largest single part of a CPU chunk. On CPUs with AMX / AVX512-BF16,
oneDNN's bf16 convolutions in channels_last, compiled by inductor with freezing (weights folded and
pre-packed once instead of reordered on every call), run the ResNet-18 over a chunk's 4 images
several times faster than fp32 (eager or ONNX Runtime) and faster than eager bf16 (bench/RESULTS.md).
The price is bf16 rounding in the image features: chunks differ from the fp32 policy by ~1e-3 of
the action range, so it is a choice, not the default (a policy trained with bf16 autocast saw the
same rounding). Compiling takes tens of seconds for a ResNet-18 (and again for each new batch size
or thread count); where inductor cannot compile (no C++ compiler) the trunk runs in eager bf16.

How: a stand-in (`robopolicy.policy.accel.standin`) takes each camera encoder's place; it runs
one inductor graph of a bf16, channels_last copy of the trunk followed by the fp32 keypoint pooling
and projection. The encoder's own fp32 weights are what the stand-in holds under their names, so a
compiled policy still saves the checkpoint it was loaded from.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch._inductor.config as inductor_config

from robopolicy.errors import ConfigError
from robopolicy.policy.accel.standin import StandIn
from robopolicy.policy.encoders.vision import CameraEncoder
from robopolicy.system import cpu_supports_bf16


class _Bf16Camera(torch.nn.Module):
    """The compiled graph: images -> bf16 trunk -> the encoder's fp32 summary (keypoints and projection,
    or feature-map cells), one inductor graph."""

    def __init__(self, encoder: CameraEncoder):
        super().__init__()
        self.trunk = copy.deepcopy(encoder.trunk).eval().to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        for name in ("film", "cells", "pool", "project", "project_film"):  # what `summarize` reads
            setattr(self, name, getattr(encoder, name))

    def forward(self, images: torch.Tensor, instruction: torch.Tensor | None = None) -> torch.Tensor:
        features = self.trunk(images.to(dtype=torch.bfloat16, memory_format=torch.channels_last)).float()
        return CameraEncoder.summarize(self, features, instruction)


class Bf16Trunk:
    """The bf16 graph of one camera encoder, compiled by inductor (not a module: its bf16 weights are a copy).

    Inductor fixes a kernel's thread count when it compiles it, so there is one compiled copy per
    `torch.get_num_threads()` (made on first use: the deployment runtime's cap, which leaves a core
    to the control loop, is applied before its first, untimed chunk, so that is where it compiles).
    """

    def __init__(self, encoder: CameraEncoder, crop_hw: tuple[int, int]):
        self.eager = _Bf16Camera(encoder)
        self.compiled: dict[int, torch.nn.Module] | None = {}
        try:  # compile now, not in the first chunk
            self(torch.zeros(1, 3, *crop_hw),
                 None if encoder.film is None else torch.zeros(1, encoder.film.map.in_features))
        except Exception as err:  # noqa: BLE001 - inductor needs a working C++ toolchain
            warnings.warn(f"inductor could not compile the bf16 camera encoder ({type(err).__name__}: {err});"
                          " it runs in eager bf16", stacklevel=3)
            self.compiled = None

    def module(self) -> torch.nn.Module:
        if self.compiled is None:
            return self.eager
        threads = torch.get_num_threads()
        if threads not in self.compiled:  # a copy: compiled code is cached per module
            self.compiled[threads] = torch.compile(copy.deepcopy(self.eager), dynamic=False)
        return self.compiled[threads]

    def __call__(self, images: torch.Tensor, instruction: torch.Tensor | None = None) -> torch.Tensor:
        inputs = (images,) if instruction is None else (images, instruction)
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return self.module()(*inputs)


class Bf16CameraEncoder(StandIn):
    """A camera encoder whose trunk runs in bf16 (see the module's docstring)."""

    def __init__(self, encoder: CameraEncoder, crop_hw: tuple[int, int]):
        if not cpu_supports_bf16():
            raise ConfigError("vision_bf16 needs a CPU with AVX512-BF16 or AMX (this one has neither; without them"
                              " bf16 convolutions are slower than fp32): compile without it")
        super().__init__(encoder, "camera encoder", "a bf16 trunk")
        self.trunk_bf16 = Bf16Trunk(encoder, crop_hw)

    def forward(self, images: torch.Tensor, instruction: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inference()
        return self.trunk_bf16(images, instruction)
