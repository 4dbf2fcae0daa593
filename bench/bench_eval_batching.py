"""`robopolicy eval` episodes per minute with one policy per worker against batched policy calls.

  python bench/bench_eval_batching.py CHECKPOINT --env robosuite/NutAssemblySquare \\
      [--episodes 50] [--seed 100000] [--workers 2] [--envs 8]

The same checkpoint on the same seeds, evaluated twice one after the other: the default evaluator
(`--envs 0`: every worker process holds the policy and calls it with a batch of one) and the batched
one (`--envs N`: N envs in the worker processes, one forward pass per decision for all of them in
the main process). Records episodes/min and success of both, and how many episodes came out the same
(success and length; each episode samples its own seed's noise in both), in
bench/results/eval_batching_<name>.json.
Run it alone: it is a timing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from benchlib import machine, success_figure, write_result



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--env", required=True)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--envs", type=int, default=8)
    args = parser.parse_args()

    from robopolicy.evaluate.config import EvalConfig
    from robopolicy.evaluate.evaluator import evaluate

    out = Path("runs") / "eval_batching"
    rows, outcomes = {}, []
    for label, envs in (("one_policy_per_worker", 0), (f"batched_{args.envs}_envs", args.envs)):
        cfg = EvalConfig(episodes=args.episodes, seed=args.seed, workers=args.workers, envs=envs, videos=0)
        result = evaluate(args.checkpoint, args.env, cfg, out / label, progress=False)
        summary = result.summary
        outcomes.append({e.seed: (e.success, e.length) for e in result.episodes})
        rows[label] = {"envs": envs, "episodes_per_min": summary["timing"]["episodes_per_min"],
                       "wall_s": summary["timing"]["wall_s"], **success_figure(summary)}
        print(f"{label}: {rows[label]['episodes_per_min']:.1f} episodes/min,"
              f" {summary['successes']}/{summary['episodes']} successes", flush=True)
    same = sum(outcome == outcomes[1].get(seed) for seed, outcome in outcomes[0].items())
    print(f"the same success and length in {same} of {len(outcomes[0])} episodes", flush=True)
    name = args.env.split("/")[-1].lower()
    command = (f"python bench/bench_eval_batching.py {args.checkpoint} --env {args.env} --episodes {args.episodes}"
               f" --seed {args.seed} --workers {args.workers} --envs {args.envs}")
    record = {"env": args.env, "checkpoint": str(args.checkpoint), "seeds": [args.seed, args.seed + args.episodes - 1],
              "workers": args.workers, "runs": rows, "same_episodes": same, "machine": machine(), "command": command}
    write_result(f"eval_batching_{name}.json", record)


if __name__ == "__main__":
    main()
