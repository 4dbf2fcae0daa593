"""Degraded demonstrations: takes that succeed but teach the wrong thing, as people record them.

`robopolicy collect --degrade 0.33` turns about a third of the episodes (chosen by seed) into one of
these, so that data-quality tools can be tested against a known answer:

- `shaky`: Gaussian noise (std 0.3 action units) on the arm, executed *and recorded* — unlike DART,
  the dataset keeps the bad action, as a tremor in a teleoperator's hand would;
- `hesitant`: three pauses of 15-30 steps where the arm holds still (zero motion command; the
  gripper keeps the expert's command) at random moments of the task;
- `detour`: two stretches of 20-30 steps where the arm's translation is pushed along a random
  direction (0.6 action units), after which the expert finds its way back.

Such episodes are tagged `source: degraded-<kind>` in the episode table. Scoring tools must not
read that tag; benchmarks use it afterwards to check what the scores found.
"""

from __future__ import annotations

import numpy as np

KINDS = ("shaky", "hesitant", "detour")


class Degrader:
    """Rewrites an expert's actions for one episode (a function of the episode's seed)."""

    def __init__(self, kind: str, seed: int, arm: np.ndarray, horizon: int):
        if kind not in KINDS:
            raise ValueError(f"unknown degradation {kind!r}; known: {', '.join(KINDS)}")
        self.kind = kind
        self.arm = arm
        self.rng = np.random.default_rng([seed, 0xBAD])
        self.windows: list[tuple[int, int]] = []
        self.direction = np.zeros(0)
        span = max(horizon, 40)
        if kind == "hesitant":
            starts = np.sort(self.rng.integers(5, span - 30, size=3))
            self.windows = [(int(s), int(s + self.rng.integers(15, 31))) for s in starts]
        elif kind == "detour":
            starts = np.sort(self.rng.integers(5, span - 30, size=2))
            self.windows = [(int(s), int(s + self.rng.integers(20, 31))) for s in starts]
            self.translation = np.flatnonzero(arm)[:3]  # robosuite's OSC: x, y, z come first
            d = self.rng.normal(size=len(self.translation))
            self.direction = 0.6 * d / np.linalg.norm(d)

    def __call__(self, action: np.ndarray, t: int) -> np.ndarray:
        """The action the degraded demonstrator executes and records at step t."""
        out = np.array(action, dtype=np.float32, copy=True)
        if self.kind == "shaky":
            out[self.arm] += self.rng.normal(0.0, 0.3, size=int(self.arm.sum())).astype(np.float32)
        elif any(a <= t < b for a, b in self.windows):
            if self.kind == "hesitant":
                out[self.arm] = 0.0
            else:
                out[self.translation] += self.direction.astype(np.float32)
        return np.clip(out, -1.0, 1.0)


def degradation_for(seed: int, fraction: float) -> str | None:
    """Which degradation (if any) the episode of `seed` gets: a fraction of seeds, kinds in turn."""
    if fraction <= 0:
        return None
    rng = np.random.default_rng([seed, 0xDE6])
    if rng.random() >= fraction:
        return None
    return KINDS[int(rng.integers(len(KINDS)))]
