"""Training logs: a local metrics.jsonl (always), wandb (online / offline / disabled), a loss plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Appends one JSON object per logged step; mirrors to wandb when enabled. Rank 0 only."""

    def __init__(self, run_dir: Path, wandb_cfg, config: dict, enabled: bool = True):
        self.enabled = enabled
        self.path = run_dir / "metrics.jsonl"
        self._wandb = None
        if not enabled:
            return
        if wandb_cfg.mode != "disabled":
            import wandb

            self._wandb = wandb.init(project=wandb_cfg.project, entity=wandb_cfg.entity,
                                     name=wandb_cfg.name or run_dir.name, mode=wandb_cfg.mode,
                                     dir=str(run_dir), config=config, resume="allow", id=_run_id(run_dir))

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, after_step: int) -> None:
    """On resume, drop lines a killed run logged after its last checkpoint (they will be re-logged)."""
    path = run_dir / "metrics.jsonl"
    if path.is_file():
        keep = [r for r in read_metrics(run_dir) if r.get("step", 0) <= after_step]
        path.write_text("".join(json.dumps(r) + "\n" for r in keep))


def plot_loss(run_dir: Path) -> Path | None:
    """loss.png: training loss (log scale) and learning rate against step."""
    records = [r for r in read_metrics(run_dir) if "loss" in r]
    if not records:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [r["loss"] for r in records], label="training loss")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    evals = [r for r in read_metrics(run_dir) if "eval/success_rate" in r]
    if evals:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in evals], [r["eval/success_rate"] for r in evals], "o-", color="tab:green",
                 label="eval success rate")
        ax2.set_ylim(0, 1.05)
        ax2.set_ylabel("success rate")
    ax.set_title(run_dir.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = run_dir / "loss.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def _run_id(run_dir: Path) -> str:
    import hashlib

    return hashlib.sha1(str(run_dir.resolve()).encode()).hexdigest()[:12]
