"""Experiment configs: YAML files plus dotted command-line overrides, strictly typed.

    cfg = load_config("configs/lift_diffusion.yaml", ["train.steps=500", "policy.head=flow"])

Unknown keys are errors (with a did-you-mean); values are parsed as YAML scalars and checked
against the dataclass types. The resolved config is saved as config.yaml in every run folder.
YAML is read with `yaml.safe_load`: a config never executes code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from robopolicy.errors import ConfigError
from robopolicy.evaluate.config import EvalConfig
from robopolicy.policy.config import PolicyConfig
from robopolicy.structs import from_dict, to_dict
from robopolicy.train.config import DataConfig, TrainConfig, WandbConfig


@dataclass
class CollectConfig:
    """Demonstrations to generate when data.path does not exist yet (used by `robopolicy quickstart`)."""

    env: str | None = None
    episodes: int = 50
    images: bool = False
    image_size: int = 84
    workers: int = 2
    seed: int = 0
    every_instruction: bool = False  # record each layout once per instruction of the env
    noise: float = 0.0  # DART: std of the noise added to the executed (not the recorded) expert actions
    degrade: float = 0.0  # fraction of bad takes (shaky, hesitant, detour), tagged degraded-<kind>
    # DART episodes collected after the clean ones (seeds from dart_seed) and merged behind them
    dart_episodes: int = 0
    dart_noise: float = 0.1
    dart_seed: int = 1000

    def __post_init__(self):
        if self.dart_episodes < 0:
            raise ValueError(f"collect.dart_episodes must be >= 0, got {self.dart_episodes}")
        if self.dart_episodes and self.dart_seed < self.seed + self.episodes:
            raise ValueError(f"collect.dart_seed ({self.dart_seed}) must come after the clean episodes' seeds"
                             f" ({self.seed}..{self.seed + self.episodes - 1} and up)")


@dataclass
class DaggerConfig:
    """`robopolicy dagger`: rounds of expert-labelled rollouts of the policy, each followed by
    fine-tuning on the demonstrations plus every labelled rollout so far (robopolicy.dagger)."""

    rounds: int = 3
    episodes_per_round: int = 20
    steps_per_round: int = 1000  # fine-tuning steps after each round (round 0 trains train.steps)
    beta: float = 0.0  # probability that a rollout step executes the expert's action instead of the policy's
    seed: int = 300_000  # rollout seeds: disjoint from demonstrations (0...) and evaluation (100000...)

    def __post_init__(self):
        if self.rounds < 0 or self.episodes_per_round < 1 or self.steps_per_round < 1:
            raise ValueError("dagger.rounds must be >= 0, episodes_per_round and steps_per_round >= 1")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"dagger.beta is a probability, got {self.beta}")


@dataclass
class ExperimentConfig:
    name: str = "experiment"
    output_dir: str = "runs"  # the run folder is <output_dir>/<name>
    collect: CollectConfig = field(default_factory=CollectConfig)
    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    dagger: DaggerConfig = field(default_factory=DaggerConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.name


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def apply_override(data: dict, override: str) -> None:
    """`a.b.c=value` sets data["a"]["b"]["c"] = yaml.safe_load(value)."""
    if "=" not in override:
        raise ConfigError(f"override {override!r} must look like key.sub=value")
    key, raw = override.split("=", 1)
    key = key.strip().lstrip("-")
    if not key:
        raise ConfigError(f"override {override!r} has no key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None, schema: type = ExperimentConfig):
    """A typed config (`schema`, an experiment's by default) from YAML `path`, then dotted `overrides`."""
    data: dict = dict(base or {})
    if path is not None:
        data = _merge(data, read_yaml(path))
    for override in overrides or []:
        apply_override(data, override)
    return from_dict(schema, data)


def save_config(cfg, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
