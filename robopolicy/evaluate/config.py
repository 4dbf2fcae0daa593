"""Evaluation settings: used by `robopolicy eval` and by periodic evaluation during training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class EvalConfig:
    env: str | None = None  # registered env name, e.g. robosuite/Lift; None = no simulation evaluation
    episodes: int = 50
    workers: int = 2
    # envs stepped together, their policy calls batched into one forward pass per decision (in this
    # process; the envs spread over `workers` processes); 0 = one policy per worker, batch 1
    envs: int = 0
    seed: int = 100_000  # episode i uses seed + i; training demonstrations use seeds below 100000
    every: int = 0  # evaluate every N training steps (0 = only after training)
    inference_steps: int | None = None  # diffusion / flow steps; None = the policy's default
    n_action_steps: int | None = None  # actions executed per chunk; None = the policy's default
    # a diffusion policy's sampler spacing (policy.diffusion.timestep_spacing); None = the policy's own
    timestep_spacing: Literal["leading", "trailing"] | None = None
    execution: Literal["receding", "ensemble"] = "receding"
    ensemble_decay: float = 0.01  # temporal ensembling weight exp(-decay * i), ACT's default
    weights: Literal["ema", "raw"] = "ema"
    max_steps: int | None = None  # episode step limit; None = the env's default
    videos: int = 4  # episodes recorded as mp4 (successes and failures)
    image_size: int | None = None  # camera size; None = what the policy was trained on
    compose: list[str] = field(default_factory=list)  # more flow checkpoints sampling with this one (GPC)
    compose_weights: list[float] | None = None  # velocity weights, this checkpoint's first; None = equal

    def __post_init__(self):
        if self.envs < 0:
            raise ValueError(f"eval.envs must be >= 0 (0 = unbatched), got {self.envs}")


def seed_ranges_overlap(first_a: int, count_a: int, first_b: int, count_b: int) -> bool:
    """Whether seeds first_a..first_a+count_a-1 and first_b..first_b+count_b-1 share one: settings chosen
    on validation seeds must never be scored on the same seeds."""
    return first_a < first_b + count_b and first_b < first_a + count_a
