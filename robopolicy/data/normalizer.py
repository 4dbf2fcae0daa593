"""Feature normalization that travels inside a checkpoint.

Each low-dim feature is mapped with y = (x - offset) * scale, from dataset statistics:
  mean_std  offset = mean, scale = 1 / std
  min_max   offset = (max + min) / 2, scale = 2 / (max - min)   -> [-1, 1]
  identity  offset = 0, scale = 1
A dimension whose std (or range) is ~0 — e.g. the rotation deltas a scripted expert never uses —
normalizes to exactly 0 and unnormalizes to its constant value whatever the network outputs:
nothing about it can be learned, so nothing the network says about it is passed on (no division
by zero, and no spurious rotation commands). Offsets and scales are buffers, saved with the
policy's weights.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn

from robopolicy.errors import CheckpointError

MODES = ("mean_std", "min_max", "identity")
DEGENERATE = 1e-6


def _buffer_name(key: str) -> str:
    return key.replace(".", "__")


class Normalizer(nn.Module):
    def __init__(self, modes: Mapping[str, str], dims: Mapping[str, int],
                 stats: Mapping[str, Mapping[str, np.ndarray]] | None = None):
        super().__init__()
        for key, mode in modes.items():
            if mode not in MODES:
                raise ValueError(f"normalization mode for {key!r} must be one of {MODES}, got {mode!r}")
        self.modes = dict(modes)
        self.dims = dict(dims)
        for key in self.modes:
            offset, scale, spread = torch.zeros(self.dims[key]), torch.ones(self.dims[key]), torch.ones(self.dims[key])
            if stats is not None and self.modes[key] != "identity":
                if key not in stats:
                    raise ValueError(f"no statistics for feature {key!r}; stats cover {sorted(stats)}")
                offset, scale, spread = self._affine(key, stats[key])
            self.register_buffer(_buffer_name(key) + "__offset", offset)
            self.register_buffer(_buffer_name(key) + "__scale", scale)
            self.register_buffer(_buffer_name(key) + "__spread", spread)

    def _affine(self, key: str, s: Mapping[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mode = self.modes[key]
        if mode == "mean_std":
            center = np.asarray(s["mean"], dtype=np.float64).reshape(-1)
            spread = np.asarray(s["std"], dtype=np.float64).reshape(-1)
        else:
            lo = np.asarray(s["min"], dtype=np.float64).reshape(-1)
            hi = np.asarray(s["max"], dtype=np.float64).reshape(-1)
            center, spread = (hi + lo) / 2.0, (hi - lo) / 2.0
        if center.shape != (self.dims[key],):
            raise ValueError(f"statistics for {key!r} have {center.size} dims, the feature has {self.dims[key]}")
        if not (np.isfinite(center).all() and np.isfinite(spread).all()):
            raise ValueError(f"statistics for {key!r} contain NaN or inf")
        varies = spread > DEGENERATE
        scale = np.where(varies, 1.0 / np.maximum(spread, DEGENERATE), 0.0)
        spread = np.where(varies, spread, 0.0)
        as_tensor = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
        return as_tensor(center), as_tensor(scale), as_tensor(spread)

    def _params(self, key: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        name = _buffer_name(key)
        return getattr(self, name + "__offset"), getattr(self, name + "__scale"), getattr(self, name + "__spread")

    def normalize(self, key: str, x: torch.Tensor) -> torch.Tensor:
        if key not in self.modes:
            return x
        offset, scale, _ = self._params(key)
        if x.shape[-1] != offset.shape[0]:
            raise CheckpointError(f"feature {key!r} has {x.shape[-1]} dims, the policy was trained with {offset.shape[0]}")
        return (x - offset) * scale

    def unnormalize(self, key: str, y: torch.Tensor) -> torch.Tensor:
        if key not in self.modes:
            return y
        offset, _, spread = self._params(key)
        return y * spread + offset

    def normalize_batch(self, batch: Mapping[str, torch.Tensor]) -> dict:
        return {k: (self.normalize(k, v) if k in self.modes else v) for k, v in batch.items()}
