"""Training configuration (what `robopolicy train` reads from YAML under `data:`, `train:`, `wandb:`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class DataConfig:
    path: str = ""  # dataset folder or hub repo id
    episodes: list[int] | None = None  # train on a subset of episodes
    revision: str | None = None


@dataclass
class WandbConfig:
    mode: Literal["disabled", "offline", "online"] = "disabled"  # disabled needs no account
    project: str = "robopolicy"
    entity: str | None = None
    name: str | None = None


@dataclass
class TrainConfig:
    steps: int = 2000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-6
    betas: list[float] = field(default_factory=lambda: [0.95, 0.999])
    warmup_steps: int = 200
    scheduler: Literal["cosine", "constant"] = "cosine"
    grad_clip: float = 10.0
    ema: bool = True
    ema_power: float = 0.75  # EMA decay warms up as 1 - (1 + step) ** -power (diffusion policy)
    ema_max_decay: float = 0.9999
    seed: int = 0
    device: str = "auto"  # auto = cuda, else mps, else cpu
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, and on bf16 CPUs for image policies
    num_threads: int = 0  # CPU threads for torch; 0 = all cores (divided among local ranks)
    log_every: int = 50
    save_every: int = 1000
    keep_checkpoints: int = 2  # older step_* folders are deleted (last and best are kept)
    progress: bool = True
    # start from this policy checkpoint's weights and normalization instead of a fresh network
    # (fine-tuning on new or aggregated data, e.g. DAgger rounds); its policy config must match
    init_from: str | None = None

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError("train.steps and train.batch_size must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if len(self.betas) != 2:
            raise ValueError("train.betas needs two values")
        for name in ("log_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.num_threads < 0:
            raise ValueError("train.warmup_steps and train.num_threads must be >= 0")
