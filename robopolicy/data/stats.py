"""Per-feature statistics (min, max, mean, std, count, quantiles) in LeRobot's layout.

Numeric features get per-dimension stats of shape (D,); camera features get per-channel stats of
shape (3, 1, 1) on a [0, 1] scale, computed from a sample of frames. Episode stats are combined
exactly for mean/std (pooled variance) and conservatively for quantiles (the outermost episode
value), which is what LeRobot does, so stats.json files from both tools mean the same thing.
Everything is computed in float64: float32 running sums lose the std of near-constant signals.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
QUANTILE_KEYS = tuple(f"q{int(round(q * 100)):02d}" for q in QUANTILES)
STAT_KEYS = ("min", "max", "mean", "std", "count") + QUANTILE_KEYS

Stats = dict[str, np.ndarray]


def vector_stats(values: np.ndarray) -> Stats:
    """Stats over axis 0 of an (N, D) or (N,) array."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    x = x.reshape(x.shape[0], -1)
    stats = {
        "min": x.min(axis=0),
        "max": x.max(axis=0),
        "mean": x.mean(axis=0),
        "std": x.std(axis=0),
        "count": np.array([x.shape[0]]),
    }
    for key, q in zip(QUANTILE_KEYS, np.quantile(x, QUANTILES, axis=0)):
        stats[key] = q
    return stats


def sample_frame_indices(num_frames: int, min_samples: int = 100, max_samples: int = 10_000) -> np.ndarray:
    """Evenly spaced frame indices; more frames for longer episodes, like LeRobot's heuristic."""
    n = max(min(num_frames, min_samples), min(int(num_frames ** 0.75), max_samples))
    return np.unique(np.round(np.linspace(0, num_frames - 1, n)).astype(np.int64))


def image_stats(frames: np.ndarray) -> Stats:
    """Per-channel stats of uint8 (N, H, W, C) frames on a [0, 1] scale, shaped (C, 1, 1)."""
    n = frames.shape[0]
    pixels = frames.reshape(-1, frames.shape[-1]).astype(np.float64) / 255.0
    stats = vector_stats(pixels)
    stats = {k: (v if k == "count" else v.reshape(-1, 1, 1)) for k, v in stats.items()}
    stats["count"] = np.array([n])
    return stats


def aggregate(stats_list: Iterable[Stats]) -> Stats:
    """Combine per-episode stats of one feature into dataset stats."""
    stats_list = list(stats_list)
    counts = np.array([float(s["count"][0]) for s in stats_list])
    means = np.stack([s["mean"] for s in stats_list])
    variances = np.stack([np.square(s["std"]) for s in stats_list])
    w = counts.reshape((-1,) + (1,) * (means.ndim - 1))
    total = counts.sum()
    mean = (means * w).sum(axis=0) / total
    var = ((variances + np.square(means - mean)) * w).sum(axis=0) / total
    out = {
        "min": np.min(np.stack([s["min"] for s in stats_list]), axis=0),
        "max": np.max(np.stack([s["max"] for s in stats_list]), axis=0),
        "mean": mean,
        "std": np.sqrt(np.maximum(var, 0.0)),
        "count": np.array([int(total)]),
    }
    for key in QUANTILE_KEYS:
        if all(key in s for s in stats_list):
            values = np.stack([s[key] for s in stats_list])
            out[key] = values.min(axis=0) if int(key[1:]) <= 50 else values.max(axis=0)
    return out


def to_json(stats: dict[str, Stats]) -> dict:
    """Nested lists, the form stored in meta/stats.json."""
    return {feature: {k: np.asarray(v).tolist() for k, v in s.items()} for feature, s in stats.items()}


def from_json(data: dict) -> dict[str, Stats]:
    return {feature: {k: np.asarray(v, dtype=np.float64) for k, v in s.items()} for feature, s in data.items()}
