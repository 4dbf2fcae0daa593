"""Turning chunk predictions into one action per control step.

A chunk policy predicts H future actions at once; how many of them to execute before asking again
is a runtime choice, shared by offline evaluation and deployment:

  receding  execute the first n_action_steps of each chunk, then predict again from the newest
            observation (diffusion policy's default; n trades reactivity against compute).
  ensemble  predict every step and average all predictions made for the current step, weighted
            exp(-decay * i) with i = 0 for the oldest (ACT's temporal ensembling): smoother motion
            at the price of one inference per step.

Both keep the observation history the policy needs (the last n_obs_steps observations; at the
start of an episode the first observation is repeated, as during training).

How chunks become actions is in two small classes shared with deployment (robopolicy.deploy.runtime),
so that what is evaluated is what is deployed: `ActionQueue` (step-stamped planned actions; a new
chunk replaces the plan from its first step on) and `ChunkEnsemble` (temporal ensembling).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Mapping

import numpy as np
import torch


class ObservationHistory:
    """The last n observations stacked along a new leading axis, per key."""

    def __init__(self, n: int):
        self.n = n
        self._frames: deque = deque(maxlen=n)

    def reset(self) -> None:
        self._frames.clear()

    def push(self, observation: Mapping[str, Any]) -> dict:
        if not self._frames:
            for _ in range(self.n):
                self._frames.append(observation)
        else:
            self._frames.append(observation)
        stacked: dict[str, Any] = {}
        for key, value in observation.items():
            if isinstance(value, str):
                stacked[key] = value
            else:
                stacked[key] = np.stack([np.asarray(f[key]) for f in self._frames])
        return stacked


class ActionQueue:
    """Planned actions, each stamped with the control step it is for."""

    def __init__(self):
        self._items: deque = deque()

    def clear(self) -> None:
        self._items.clear()

    def plan(self, step: int, actions) -> None:
        """`actions` for steps step, step+1, ...; they replace whatever was planned from `step` on."""
        self._items = deque([(s, a) for s, a in self._items if s < step]
                            + [(step + i, a) for i, a in enumerate(actions)])

    def take(self, step: int) -> tuple[np.ndarray | None, int]:
        """(the action planned for `step` or None, how many actions were dropped because their
        step had already passed)."""
        stale = 0
        while self._items and self._items[0][0] < step:
            self._items.popleft()
            stale += 1
        if self._items and self._items[0][0] == step:
            return self._items.popleft()[1], stale
        return None, stale

    def remaining(self, step: int) -> int:
        return sum(1 for s, _ in self._items if s >= step)

    def planned(self, start: int, stop: int) -> list[np.ndarray]:
        """The actions planned for steps start .. stop-1 (those already committed to)."""
        return [a for s, a in self._items if start <= s < stop]


class ChunkEnsemble:
    """ACT's temporal ensembling: the action for a step is the exp(-decay * i)-weighted mean of every
    chunk that covers it, i = 0 for the oldest."""

    def __init__(self, decay: float = 0.01):
        self.decay = decay
        self._chunks: list[tuple[int, np.ndarray]] = []  # (step the chunk starts at, chunk)

    def clear(self) -> None:
        self._chunks.clear()

    def add(self, step: int, chunk: np.ndarray) -> None:
        self._chunks.append((step, chunk))

    def action(self, step: int) -> np.ndarray | None:
        self._chunks = [(s, c) for s, c in self._chunks if step - s < len(c)]
        candidates = [c[step - s] for s, c in self._chunks if 0 <= step - s]
        if not candidates:
            return None
        weights = np.exp(-self.decay * np.arange(len(candidates)))
        return (weights[:, None] * np.stack(candidates)).sum(0) / weights.sum()


def resolve_n_action_steps(policy, n_action_steps: int | None) -> int:
    """Actions executed per chunk: the given number, else the policy's own; it must fit in a chunk."""
    n = n_action_steps or policy.config.n_action_steps
    max_steps = policy.config.horizon - policy.chunk_start
    if not 1 <= n <= max_steps:
        raise ValueError(f"n_action_steps must be in [1, {max_steps}] for this policy, got {n}")
    return n


class ChunkExecutor:
    """Base: holds the policy, the inference settings and the observation history."""

    def __init__(self, policy, n_action_steps: int | None = None, inference_steps: int | None = None):
        self.policy = policy
        self.n_action_steps = resolve_n_action_steps(policy, n_action_steps)
        self.inference_steps = inference_steps
        self.history = ObservationHistory(policy.config.n_obs_steps)
        self.keys = [*policy.observation_keys, "task"]
        self.generator = torch.Generator()
        self.inferences = 0

    def reset(self, seed: int = 0) -> None:
        """Start an episode; `seed` fixes the sampling noise so a rollout is reproducible."""
        self.history.reset()
        self.generator.manual_seed(seed)
        self.inferences = 0

    def remember(self, observation: Mapping[str, Any]) -> dict:
        """Add an observation (only the keys the policy reads) to the history; returns the stack."""
        return self.history.push({k: observation[k] for k in self.keys if k in observation})

    def predict(self, stacked: Mapping[str, Any]) -> np.ndarray:
        self.inferences += 1
        return self.policy.predict_chunk(stacked, steps=self.inference_steps, generator=self.generator)

    def act(self, observation: Mapping[str, Any]) -> np.ndarray:
        raise NotImplementedError


class RecedingHorizon(ChunkExecutor):
    name = "receding"

    def reset(self, seed: int = 0) -> None:
        super().reset(seed)
        self.step = 0
        self.queue = ActionQueue()

    def act(self, observation: Mapping[str, Any]) -> np.ndarray:
        stacked = self.remember(observation)
        if not self.queue.remaining(self.step):
            self.queue.plan(self.step, self.predict(stacked)[: self.n_action_steps])
        action, _ = self.queue.take(self.step)
        self.step += 1
        return action


class TemporalEnsemble(ChunkExecutor):
    name = "ensemble"

    def __init__(self, policy, n_action_steps: int | None = None, inference_steps: int | None = None,
                 decay: float = 0.01):
        super().__init__(policy, n_action_steps=1, inference_steps=inference_steps)
        self.decay = decay

    def reset(self, seed: int = 0) -> None:
        super().reset(seed)
        self.step = 0
        self.ensemble = ChunkEnsemble(self.decay)

    def act(self, observation: Mapping[str, Any]) -> np.ndarray:
        stacked = self.remember(observation)
        self.ensemble.add(self.step, self.predict(stacked))
        action = self.ensemble.action(self.step)
        self.step += 1
        return action


def make_executor(policy, strategy: str = "receding", n_action_steps: int | None = None,
                  inference_steps: int | None = None, ensemble_decay: float = 0.01) -> ChunkExecutor:
    if strategy == "receding":
        return RecedingHorizon(policy, n_action_steps, inference_steps)
    if strategy == "ensemble":
        return TemporalEnsemble(policy, inference_steps=inference_steps, decay=ensemble_decay)
    raise ValueError(f"unknown chunk execution strategy {strategy!r}; use 'receding' or 'ensemble'")
