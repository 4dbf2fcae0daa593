"""Success rates: collect -> train on the CPU -> evaluate, for each experiment config.

  python bench/bench_success.py configs/lift_lowdim_flow.yaml configs/can_lowdim_diffusion.yaml ...
  python bench/bench_success.py --evaluate RUN [--env ENV] --trained-on "1x H100"   # a run trained elsewhere
  python bench/bench_success.py --dagger configs/square_lowdim_flow_dagger.yaml   # DAgger rounds, every round's training counted
  python bench/bench_success.py --table          # markdown table of every recorded result

Each finished experiment is written to bench/results/success_<name>.json (success rate, 95%
Wilson interval, episodes, seeds, CPU training time and steps, timings, machine), so a long batch
can be interrupted and resumed; `--table` prints them for bench/RESULTS.md. `--evaluate` scores a
run folder trained on another machine (a GPU box) with its config's evaluation settings on this one,
and records where it was trained.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from benchlib import machine

RESULTS = Path(__file__).resolve().parent / "results"


def run(config: Path, overrides: list[str], dagger: bool = False, resume: bool = False) -> dict:
    """collect -> train -> evaluate (or, with `dagger`, `robopolicy dagger`'s rounds) and record it."""
    from robopolicy.config import load_config
    from robopolicy.data.dataset import LeRobotDataset

    cfg = load_config(config, overrides)
    command = shlex.join(["python", "bench/bench_success.py", *(["--dagger"] if dagger else []), str(config),
                          *_set_flags(overrides)])
    if dagger:
        from robopolicy.dagger import run_dagger

        out = run_dagger(config, overrides, resume=resume)
        t, steps, rounds = out["timings"], out["steps"], out["rounds"]
    else:
        from robopolicy.experiment import run_experiment

        out = run_experiment(config, overrides)
        t, steps, rounds = out["timings"], out["train"].steps, None
    demos = LeRobotDataset(cfg.data.path)
    record = record_of(out["report"].summary, train_steps=steps, train_seconds=t["train_s"],
                       collect_seconds=t["collect_s"], eval_seconds=t["eval_s"],
                       rollout_seconds=t.get("rollout_s"), demos=demos.num_episodes, demo_frames=len(demos),
                       demo_first_seed=cfg.collect.seed,
                       samples_seen=steps * cfg.train.batch_size, dagger_rounds=rounds,
                       config=str(config), overrides=overrides, command=command)
    return save(cfg.name, record)


def record_of(s: dict, **fields) -> dict:
    """One result record: the evaluation summary's figures plus the training and timing `fields`."""
    return {
        "env": s["env"], "head": s["policy"]["head"], "episodes": s["episodes"], "successes": s["successes"],
        "success_rate": s["success_rate"], "ci95": s["ci95"], "seeds": [s["seeds"][0], s["seeds"][-1]],
        "mean_episode_length": s["mean_episode_length"], "episodes_per_min": s["timing"]["episodes_per_min"],
        "machine": machine(),
        "per_task": {task: [r["successes"], r["episodes"]] for task, r in (s.get("per_task") or {}).items()},
        **fields,
    }


def _set_flags(overrides) -> list[str]:
    """The `--set KEY=VALUE` arguments that reproduce `overrides` (one config's, in a recorded command)."""
    return [arg for override in overrides for arg in ("--set", override)]


def save(name: str, record: dict) -> dict:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"success_{name}.json").write_text(json.dumps(record, indent=1))
    return record


def evaluate_run(run_dir: Path, env: str | None, trained_on: str, overrides: list[str] = ()) -> dict:
    """Score RUN/checkpoints/last here; training steps and time come from the run's own files.

    `overrides` (eval.* settings) apply on top of the run's config, e.g. the evaluation seeds of a run
    that was trained and first scored on validation seeds."""
    from robopolicy.config import load_config
    from robopolicy.evaluate.evaluator import evaluate

    cfg = load_config(run_dir / "config.yaml", list(overrides))
    env = env or cfg.eval.env
    checkpoint = run_dir / "checkpoints" / "last"
    steps, seconds = trained_steps_and_seconds(run_dir, checkpoint, cfg.train.batch_size)
    s = evaluate(checkpoint, env, cfg.eval, run_dir / "eval" / "final").summary
    demos = {}
    if cfg.data.path and Path(cfg.data.path).is_dir():  # the demonstrations the run trained on, when here
        from robopolicy.data.dataset import LeRobotDataset

        data = LeRobotDataset(cfg.data.path)
        demos = {"demos": data.num_episodes, "demo_frames": len(data), "demo_first_seed": cfg.collect.seed}
    record = record_of(s, train_steps=steps, train_seconds=seconds, collect_seconds=None,
                       samples_seen=steps * cfg.train.batch_size, **demos,
                       eval_seconds=s["timing"]["wall_s"], config=str(run_dir / "config.yaml"), overrides=list(overrides),
                       trained_on=trained_on,
                       command=shlex.join(["python", "bench/bench_success.py", "--evaluate", str(run_dir), "--env", env,
                                           "--trained-on", trained_on, *_set_flags(overrides)]))
    return save(run_dir.name, record)


def trained_steps_and_seconds(run_dir: Path, checkpoint: Path, batch_size: int) -> tuple[int, float | None]:
    """From summary.json when the run finished; else from the checkpoint's step and metrics.jsonl
    (time unknown without them)."""
    summary = run_dir / "summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        return s["steps"], s["train_seconds"]
    name = checkpoint.resolve().name
    metrics = run_dir / "metrics.jsonl"
    rows = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.is_file() else []
    rows = [r for r in rows if "samples_per_s" in r]
    steps = int(name.split("_")[1]) if name.startswith("step_") else rows[-1]["step"]
    if not rows:
        return steps, None
    seconds, previous = 0.0, 0
    for r in rows:  # logged throughput per interval -> time per interval
        if r["step"] > steps:
            break
        seconds += (r["step"] - previous) * batch_size / r["samples_per_s"]
        previous = r["step"]
    return steps, seconds


def table() -> str:
    rows = ["| experiment | env | head | success (95% CI) | episodes | training | eval |",
            "|---|---|---|---|---|---|---|"]
    for path in sorted(RESULTS.glob("success_*.json")):
        r = json.loads(path.read_text())
        lo, hi = r["ci95"]
        minutes = "time not recorded" if r["train_seconds"] is None else f"{r['train_seconds'] / 60:.1f} min"
        rows.append(f"| {path.stem[8:]} | {r['env']} | {r['head']} | {r['success_rate']:.0%} ({lo:.0%}-{hi:.0%}) |"
                    f" {r['successes']}/{r['episodes']} | {r['train_steps']} steps, {minutes}"
                    f" ({r.get('trained_on', '2-core CPU')}) |"
                    f" {r['episodes_per_min']:.1f} episodes/min |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="key=value", help="override for every config")
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--dagger", action="store_true",
                        help="train with `robopolicy dagger` (the config's dagger: section) instead of `run`")
    parser.add_argument("--resume", action="store_true",
                        help="with --dagger: continue a killed run, keeping its finished rounds (their time counts)")
    parser.add_argument("--evaluate", type=Path, metavar="RUN", help="score a run folder trained on another machine")
    parser.add_argument("--env", help="with --evaluate: the env, when the run's config names none")
    parser.add_argument("--trained-on", default="another machine", help="with --evaluate: where it was trained")
    args = parser.parse_args()
    if args.table:
        print(table())
        return
    if args.evaluate:
        print(json.dumps(evaluate_run(args.evaluate, args.env, args.trained_on, args.set)), flush=True)
        return
    for config in args.configs:
        record = run(config, args.set, dagger=args.dagger, resume=args.resume)
        print(json.dumps(record), flush=True)
    if not args.configs:
        parser.print_help(sys.stderr)


if __name__ == "__main__":
    main()
