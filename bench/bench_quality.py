"""Does scoring demonstrations pick better training data? All vs kept-by-score vs clean-only.

  python bench/bench_quality.py configs/square_lowdim_flow.yaml --episodes 300 --degrade 0.33 \\
      [--fold-steps 1000] [--set train.steps=6000 ...]
  ... --reuse-scores --trained-elsewhere DIR --trained-on "1x H200"   # arms trained on another machine

1. collect `--episodes` expert episodes of the config's env (seeds 0..), a `--degrade` fraction of
   them bad takes (`robopolicy collect --degrade`: shaky, hesitant, detours; tagged in the episode
   table, a tag the scorer never reads);
2. score them with `robopolicy dataset quality` (held-out-fold policies shaped by the config's policy
   section) and keep the least suspicious `1 - degrade` of them;
3. train the config three times with the same steps — on every episode, on the kept ones, on the
   clean ones (by the hidden tag) — and evaluate each on the config's evaluation seeds.

Writes bench/results/quality_<name>.json: env, success_all / success_filtered / success_clean
(each successes, episodes, rate, 95% interval), episodes, precision and recall of the episodes the
score left out against the degraded ones, timings, machine, command.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchlib import machine, success_figure

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--episodes", type=int, default=300)
    parser.add_argument("--degrade", type=float, default=0.33)
    parser.add_argument("--fold-steps", type=int, default=1000)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="key.sub=value")
    parser.add_argument("--reuse-scores", action="store_true", help="read runs/<name>_quality/ instead of scoring again")
    parser.add_argument("--trained-elsewhere", type=Path, default=None, metavar="DIR",
                        help="the three arms' run folders (<name>_{all,filtered,clean}) were trained on another machine")
    parser.add_argument("--trained-on", default="2-core CPU")
    args = parser.parse_args()

    from robopolicy.config import load_config
    from robopolicy.data import quality
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.experiment import train_then_evaluate
    from robopolicy.sim.collect import collect

    cfg = load_config(args.config, args.overrides)
    name = f"{cfg.name}_degraded"
    data = Path("datasets") / f"{name}_{args.episodes}"
    timings: dict[str, float] = {}
    if not (data / "meta" / "info.json").is_file():
        start = time.perf_counter()
        collect(cfg.collect.env, args.episodes, data, workers=cfg.collect.workers, degrade=args.degrade,
                overwrite=True, progress=False)
        timings["collect_s"] = time.perf_counter() - start
    ds = LeRobotDataset(data)
    degraded = {e for e, s in enumerate(ds.episodes.sources) if s.startswith("degraded-")}
    clean = [e for e in range(ds.num_episodes) if e not in degraded]

    score_dir = Path("runs") / f"{name}_quality"
    if args.reuse_scores:
        scored = json.loads((score_dir / "quality.json").read_text())
        keep, scorer = scored["keep"], scored["reference"]
    else:
        start = time.perf_counter()
        fold_cfg = load_config(args.config, [*args.overrides, f"train.steps={args.fold_steps}", "train.progress=false",
                                             f"train.save_every={args.fold_steps}", "train.keep_checkpoints=1"])
        report = quality.score_dataset(data, cfg=fold_cfg, folds=3, progress=False)
        keep = quality.keep_episodes(report, f"best:{1.0 - args.degrade:.4f}")
        quality.write_outputs(report, score_dir, keep)
        scorer = report.reference
        timings["score_s"] = time.perf_counter() - start
    left_out = set(range(ds.num_episodes)) - set(keep)
    precision = len(left_out & degraded) / max(len(left_out), 1)
    recall = len(left_out & degraded) / max(len(degraded), 1)
    print(f"score: left out {len(left_out)}, of which degraded {len(left_out & degraded)} of {len(degraded)}"
          f" (precision {precision:.2f}, recall {recall:.2f})", flush=True)

    results = {}
    for part, episodes in (("all", None), ("filtered", keep), ("clean", clean)):
        run_cfg = load_config(args.config, [*args.overrides, f"name={name}_{part}", f"data.path={data}",
                                            "train.progress=false"])
        run_cfg.data.episodes = episodes
        start = time.perf_counter()
        if args.trained_elsewhere is None:
            trained, evaluated = train_then_evaluate(run_cfg)
            s, steps = evaluated.summary, trained.steps
        else:
            from robopolicy.evaluate.evaluator import evaluate

            run_dir = args.trained_elsewhere / run_cfg.name
            s = evaluate(run_dir / "checkpoints" / "last", cfg.eval.env, run_cfg.eval, run_dir / "eval" / "final",
                         progress=False).summary
            steps = json.loads((run_dir / "summary.json").read_text())["steps"]
        results[part] = {**success_figure(s), "trained_on": len(episodes) if episodes is not None else ds.num_episodes,
                         "train_steps": steps, "seconds": time.perf_counter() - start}
        print(f"{part}: {s['successes']}/{s['episodes']} trained on {results[part]['trained_on']} episodes", flush=True)

    command = (f"python bench/bench_quality.py {args.config} --episodes {args.episodes} --degrade {args.degrade}"
               f" --fold-steps {args.fold_steps}" + "".join(f" --set {o}" for o in args.overrides)
               + (f" --reuse-scores --trained-elsewhere {args.trained_elsewhere} --trained-on '{args.trained_on}'"
                  if args.trained_elsewhere else ""))
    record = {
        "env": cfg.collect.env, "head": cfg.policy.head, "episodes": results["all"]["episodes"],
        "success_all": results["all"], "success_filtered": results["filtered"], "success_clean": results["clean"],
        "demos": ds.num_episodes, "degraded": sorted(degraded), "kept": keep,
        "degraded_kinds": {k: sum(s == f"degraded-{k}" for s in ds.episodes.sources) for k in ("shaky", "hesitant", "detour")},
        "precision": precision, "recall": recall, "scorer": scorer, "timings": timings,
        "arms_trained_on": args.trained_on,
        "eval_seeds": [cfg.eval.seed, cfg.eval.seed + cfg.eval.episodes - 1],
        "machine": machine(), "command": command,
    }
    RESULTS.mkdir(exist_ok=True)
    out_path = RESULTS / f"quality_{cfg.name}.json"
    out_path.write_text(json.dumps(record, indent=1))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    sys.exit(main())
