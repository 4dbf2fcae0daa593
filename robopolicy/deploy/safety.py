"""Action safety: nothing reaches a robot unchecked.

Every action passes three checks, in this order:
  finite      NaN / inf never goes out: it raises SafetyError, and the control loop stops the robot;
  bounds      each dimension is clipped to [low, high] — by default the range seen in the training
              data widened by a margin, so the policy cannot command what it was never shown;
  rate limit  each dimension moves at most `max_delta` from the previously sent action per step,
              so a glitchy chunk cannot jerk the arm.
Clipping is recorded per check so a deployment report says how often the policy was overruled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from robopolicy.errors import SafetyError


@dataclass
class SafetyConfig:
    low: list[float] | None = None  # per-dimension lower bound; None = data minimum minus margin
    high: list[float] | None = None
    margin: float = 0.05  # fraction of the data range added on both sides of the data bounds
    max_delta: list[float] | float | None = None  # per-step change limit; None = max_delta_fraction of the range
    max_delta_fraction: float = 0.5  # a full-range swing takes at least two steps


@dataclass
class SafetyFilter:
    low: np.ndarray
    high: np.ndarray
    max_delta: np.ndarray
    clipped_bounds: int = 0
    clipped_rate: int = 0
    checked: int = 0
    events: list = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: SafetyConfig, action_stats: Mapping[str, Sequence[float]] | None,
                    action_dim: int) -> "SafetyFilter":
        if cfg.low is not None and cfg.high is not None:
            low, high = np.asarray(cfg.low, dtype=np.float64), np.asarray(cfg.high, dtype=np.float64)
        elif action_stats is not None:
            data_low = np.asarray(action_stats["min"], dtype=np.float64).reshape(-1)
            data_high = np.asarray(action_stats["max"], dtype=np.float64).reshape(-1)
            pad = cfg.margin * (data_high - data_low)
            low = np.asarray(cfg.low, dtype=np.float64) if cfg.low is not None else data_low - pad
            high = np.asarray(cfg.high, dtype=np.float64) if cfg.high is not None else data_high + pad
        else:
            raise SafetyError("no action bounds: give safety.low/high or a checkpoint with action statistics")
        if low.shape != (action_dim,) or high.shape != (action_dim,):
            raise SafetyError(f"action bounds must have {action_dim} values, got {low.size} and {high.size}")
        if np.any(low > high):
            raise SafetyError(f"action bound low > high in dimension {int(np.flatnonzero(low > high)[0])}")
        if cfg.max_delta is None:
            span = np.maximum(high - low, 1e-6)
            max_delta = cfg.max_delta_fraction * span
        else:
            max_delta = np.broadcast_to(np.asarray(cfg.max_delta, dtype=np.float64), (action_dim,)).copy()
        return cls(low=low, high=high, max_delta=max_delta)

    def __call__(self, action: np.ndarray, previous: np.ndarray | None) -> np.ndarray:
        """The action to send: finite, in bounds, rate-limited. Raises SafetyError if not finite."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        self.checked += 1
        if action.shape != self.low.shape:
            raise SafetyError(f"action has {action.size} values, the robot takes {self.low.size}")
        if not np.isfinite(action).all():
            raise SafetyError(f"non-finite action {action.tolist()} refused")
        bounded = np.clip(action, self.low, self.high)
        if not np.array_equal(bounded, action):
            self.clipped_bounds += 1
            self.events.append(("bounds", self.checked, action.tolist()))
        if previous is not None:
            limited = np.clip(bounded, previous - self.max_delta, previous + self.max_delta)
            if not np.array_equal(limited, bounded):
                self.clipped_rate += 1
                self.events.append(("rate", self.checked, bounded.tolist()))
            bounded = limited
        return bounded.astype(np.float32)

    def report(self) -> dict:
        return {"checked": self.checked, "clipped_bounds": self.clipped_bounds, "clipped_rate": self.clipped_rate,
                "low": self.low.tolist(), "high": self.high.tolist(), "max_delta": self.max_delta.tolist()}
