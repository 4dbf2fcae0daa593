"""RL fine-tuning results: `robopolicy finetune` from a behaviour-cloned checkpoint, recorded.

  python bench/bench_finetune.py configs/finetune/square_lowdim_flow.yaml [--set key=value ...] [--resume]

Runs the fine-tuning the config describes (robopolicy.rl.finetune; its run folder holds the
learning curve, metrics.jsonl and the evaluation reports) and writes
bench/results/finetune_<name>.json: env, head, success before and after on the same evaluation
seeds, episodes, environment steps, wall seconds, machine and the command, and the learning curve
(`curve`: every iteration's rollout, PPO, validation and evaluation figures, read from the run folder's
metrics.jsonl). `--resume` continues a stopped run (with `--set iterations=N` at or below the iterations
done, it only scores the last checkpoint).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchlib import command_line, machine

RESULTS = Path(__file__).resolve().parent / "results"
CURVE_KEYS = ("env_steps", "wall_seconds", "rollout/success_rate", "rollout/return", "ppo/approx_kl",
              "ppo/clip_fraction", "ppo/noise_std", "validation/success_rate", "eval/success_rate")


def learning_curve(run_dir: Path) -> list[dict]:
    """Every iteration's figures from the run's metrics.jsonl, one row per iteration (a step's rollout,
    validation and evaluation lines merged), so the recorded curve regenerates with the same command."""
    from robopolicy.train.logger import read_metrics

    rows: dict[int, dict] = {}
    for entry in read_metrics(run_dir):
        row = rows.setdefault(entry["step"], {"step": entry["step"]})
        row.update({key: entry[key] for key in CURVE_KEYS if key in entry})
    return [rows[step] for step in sorted(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="key=value")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    from robopolicy.rl.finetune import finetune, load_finetune_config

    cfg = load_finetune_config(args.config, args.set)
    out = finetune(cfg, resume=args.resume)
    record = {**out, "machine": machine(), "config": str(args.config), "overrides": args.set,
              "command": command_line(),
              "curve": learning_curve(Path(cfg.output_dir) / cfg.name)}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"finetune_{cfg.name}.json"
    path.write_text(json.dumps(record, indent=1))
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    sys.exit(main())
