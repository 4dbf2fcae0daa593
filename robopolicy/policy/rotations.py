"""Quaternions in state features, rewritten as continuous rotation features before normalization.

A unit quaternion q and -q are the same rotation, and simulators pick one of the two by a fixed
rule (robosuite: the branch of its matrix-to-quaternion conversion). Where the rule switches, the
observed quaternion jumps to its negative while nothing moved. A robosuite square nut does this
whenever its yaw passes pi — which is exactly where it must be to fit on its peg — so a policy
reading the raw quaternion sees its input leap between two far-apart values at the moment that
needs the most precision.

`PolicyConfig.quaternions` names where xyzw quaternions sit in each state feature; each is
replaced by the first two columns of its rotation matrix (6 numbers: unique for a rotation and
continuous in it; Zhou et al., "On the Continuity of Rotation Representations in Neural
Networks", 2019). The policy applies this to every batch before normalization, so datasets,
envs and robots keep their own quaternions, and normalization statistics are computed on the
rewritten feature (`rotation_feature_stats`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch

from robopolicy.data.stats import vector_stats

QUATERNION = 4
ROTATION_6D = 6


def quaternion_to_6d(q: torch.Tensor) -> torch.Tensor:
    """(..., 4) xyzw quaternions (any norm) -> (..., 6): the rotation matrix's first two columns."""
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    x, y, z, w = q.unbind(-1)
    first = torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y + z * w), 2 * (x * z - y * w)], dim=-1)
    second = torch.stack([2 * (x * y - z * w), 1 - 2 * (x * x + z * z), 2 * (y * z + x * w)], dim=-1)
    return torch.cat([first, second], dim=-1)


def expanded_dim(raw_dim: int, starts: Sequence[int]) -> int:
    """Width of a feature of `raw_dim` numbers once its quaternions at `starts` are rewritten."""
    return raw_dim + (ROTATION_6D - QUATERNION) * len(starts)


def check_starts(key: str, raw_dim: int, starts: Sequence[int]) -> None:
    ordered = sorted(starts)
    for start in ordered:
        if start < 0 or start + QUATERNION > raw_dim:
            raise ValueError(f"quaternions.{key}: a quaternion starting at {start} does not fit in its"
                             f" {raw_dim} numbers")
    for a, b in zip(ordered, ordered[1:]):
        if b < a + QUATERNION:
            raise ValueError(f"quaternions.{key}: quaternions at {a} and {b} overlap")


def rewrite(x: torch.Tensor, starts: Sequence[int]) -> torch.Tensor:
    """Replace the quaternions of `x` (..., D) that start at `starts` by their 6-D form, in place of
    each (the other numbers keep their order)."""
    pieces, at = [], 0
    for start in sorted(starts):
        pieces.append(x[..., at:start])
        pieces.append(quaternion_to_6d(x[..., start:start + QUATERNION].float()).to(x.dtype))
        at = start + QUATERNION
    pieces.append(x[..., at:])
    return torch.cat(pieces, dim=-1)


def rewrite_batch(batch: Mapping[str, object], quaternions: Mapping[str, Sequence[int]]) -> dict:
    """The batch with every configured state feature rewritten; other entries untouched."""
    if not quaternions:
        return dict(batch)
    return {k: (rewrite(v, quaternions[k]) if k in quaternions else v) for k, v in batch.items()}


def rotation_feature_stats(values: np.ndarray, starts: Sequence[int]) -> dict[str, np.ndarray]:
    """LeRobot-layout statistics of the rewritten feature, from the raw (N, D) column."""
    rewritten = rewrite(torch.as_tensor(np.asarray(values, dtype=np.float64)), starts)
    return vector_stats(rewritten.numpy())
