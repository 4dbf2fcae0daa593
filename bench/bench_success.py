"""Success rates: collect -> train on the CPU -> evaluate, for each experiment config.

  python bench/bench_success.py configs/lift_lowdim_flow.yaml configs/can_lowdim_diffusion.yaml ...
  python bench/bench_success.py --table          # markdown table of every recorded result

Each finished experiment is written to bench/results/success_<name>.json (success rate, 95%
Wilson interval, episodes, seeds, CPU training time and steps, timings, machine), so a long batch
can be interrupted and resumed; `--table` prints them for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from benchlib import machine

RESULTS = Path(__file__).resolve().parent / "results"


def run(config: Path, overrides: list[str]) -> dict:
    from robopolicy.experiment import run_experiment

    out = run_experiment(config, overrides)
    s, t, train = out["report"].summary, out["timings"], out["train"]
    record = {
        "config": str(config), "overrides": overrides, "env": s["env"], "head": s["policy"]["head"],
        "episodes": s["episodes"], "successes": s["successes"], "success_rate": s["success_rate"], "ci95": s["ci95"],
        "seeds": [s["seeds"][0], s["seeds"][-1]], "mean_episode_length": s["mean_episode_length"],
        "train_steps": train.steps, "train_seconds": t["train_s"], "collect_seconds": t["collect_s"],
        "eval_seconds": t["eval_s"], "episodes_per_min": s["timing"]["episodes_per_min"], "machine": machine(),
        "per_task": {task: [r["successes"], r["episodes"]] for task, r in (s.get("per_task") or {}).items()},
        "command": f"python bench/bench_success.py {config} {' '.join(overrides)}".strip(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"success_{train.run_dir.name}.json").write_text(json.dumps(record, indent=1))
    return record


def table() -> str:
    rows = ["| experiment | env | head | success (95% CI) | episodes | CPU training | eval |",
            "|---|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("success_*.json")):
        r = json.loads(path.read_text())
        lo, hi = r["ci95"]
        rows.append(f"| {path.stem[8:]} | {r['env']} | {r['head']} | {r['success_rate']:.0%} ({lo:.0%}-{hi:.0%}) |"
                    f" {r['successes']}/{r['episodes']} | {r['train_steps']} steps, {r['train_seconds'] / 60:.1f} min |"
                    f" {r['episodes_per_min']:.1f} episodes/min |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="key=value", help="override for every config")
    parser.add_argument("--table", action="store_true")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    for config in args.configs:
        record = run(config, args.set)
        print(json.dumps(record), flush=True)
    if not args.configs:
        parser.print_help(sys.stderr)


if __name__ == "__main__":
    main()
