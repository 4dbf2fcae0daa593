"""Fine-tuning rollouts with the envs in the fine-tuning process against the envs in worker processes.

  python bench/bench_rollout_workers.py configs/finetune/tabletop_pick_lowdim_diffusion_larger_steps.yaml \
      [--workers 0 2] [--repeats 2]

Runs one iteration's rollouts (the config's start, envs, seeds and generator of iteration 0, as
`robopolicy finetune` runs them) once per worker setting, alternating the settings `--repeats` times so
a drift of the shared host's speed falls on both, and checks that every setting produced the same rollouts
(success, decisions, environment steps). Writes bench/results/rollout_workers_<config stem>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchlib import command_line, machine

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch

    from robopolicy.rl.finetune import load_finetune_config, rollout_env_kwargs, start_learner
    from robopolicy.rl.vector import ChunkEnvs

    cfg = load_finetune_config(args.config, [])
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    learner = start_learner(cfg)
    policy = learner.policy
    env_kwargs = rollout_env_kwargs(policy, cfg)
    seeds = [cfg.seed + i for i in range(cfg.envs)]

    runs: dict[int, list[dict]] = {w: [] for w in args.workers}
    for _ in range(args.repeats):
        for workers in args.workers:
            with ChunkEnvs(cfg.env, cfg.envs, policy.config.n_obs_steps, env_kwargs, cfg.max_steps, workers) as envs:
                generator = torch.Generator().manual_seed(cfg.seed * 1000)
                started = time.perf_counter()
                _, stats = learner.rollouts(envs, seeds, generator)
                seconds = time.perf_counter() - started
            run = {"seconds": seconds, "success_rate": stats["rollout/success_rate"],
                   "decisions": stats["rollout/decisions"], "env_steps": stats["env_steps"]}
            runs[workers].append(run)
            print(f"workers={workers}: {seconds:.1f} s, success {run['success_rate']:.4f}, "
                  f"{run['decisions']} decisions", flush=True)
    outcomes = {(r["success_rate"], r["decisions"], r["env_steps"]) for rs in runs.values() for r in rs}
    record = {"config": str(args.config), "env": cfg.env, "envs": cfg.envs, "checkpoint": cfg.checkpoint,
              "same_rollouts": len(outcomes) == 1,
              "workers": {str(w): {"median_seconds": float(np.median([r["seconds"] for r in rs])), "runs": rs}
                          for w, rs in runs.items()},
              "machine": machine(), "command": command_line()}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"rollout_workers_{args.config.stem}.json"
    path.write_text(json.dumps(record, indent=1))
    print(json.dumps({k: v for k, v in record.items() if k != "workers"}), flush=True)
    print({w: round(v["median_seconds"], 1) for w, v in record["workers"].items()})


if __name__ == "__main__":
    sys.exit(main())
