"""Test-time composition (GPC): does sampling from two or more flow policies together beat each of them?

  python bench/bench_compose.py NAME CHECKPOINT_A CHECKPOINT_B [CHECKPOINT_C ...] --env robosuite/NutAssemblySquare \\
      [--episodes 50] [--seed 100000] [--search-seed 200000] [--search-episodes 20] \\
      [--envs 8] [--n-action-steps 4]

Each part alone and the composition are evaluated on the same evaluation seeds; the composition's
weights are chosen first on validation seeds (`robopolicy eval --compose-search`: a 0.25 grid,
`--search-episodes` per weighting; with four or more parts the grid holds equal weights only), never on the
evaluation seeds. Writes
bench/results/compose_<NAME>.json: env, success_parts (one per policy), success_composed, weights,
the search table, episodes, machine, command.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from benchlib import machine, success_figure

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name")
    parser.add_argument("checkpoints", nargs="+", type=Path, help="two or more")
    parser.add_argument("--env", required=True)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--search-seed", type=int, default=200_000)
    parser.add_argument("--search-episodes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--envs", type=int, default=0, help="batched evaluation: envs stepped together (0 = off)")
    parser.add_argument("--n-action-steps", type=int, help="actions executed per chunk (default: each policy's)")
    args = parser.parse_args()
    if len(args.checkpoints) < 2:
        parser.error("composition needs at least two checkpoints")

    from robopolicy.evaluate.composition import search_weights
    from robopolicy.evaluate.config import EvalConfig
    from robopolicy.evaluate.evaluator import evaluate

    out = Path("runs") / f"compose_{args.name}"
    base = EvalConfig(episodes=args.episodes, seed=args.seed, workers=args.workers, envs=args.envs,
                      n_action_steps=args.n_action_steps, videos=0)
    parts = []
    for i, checkpoint in enumerate(args.checkpoints):
        summary = evaluate(checkpoint, args.env, base, out / f"part_{i}", progress=False).summary
        parts.append({"checkpoint": str(checkpoint), **success_figure(summary)})
        print(f"part {i}: {summary['successes']}/{summary['episodes']}", flush=True)
    composed_cfg = dataclasses.replace(base, compose=[str(c) for c in args.checkpoints[1:]])
    weights, table = search_weights(args.checkpoints[0], args.env, composed_cfg, out, seed=args.search_seed,
                                    episodes=args.search_episodes, progress=False)
    composed_cfg = dataclasses.replace(composed_cfg, compose_weights=weights)
    summary = evaluate(args.checkpoints[0], args.env, composed_cfg, out / "composed", progress=False).summary
    print(f"composed {weights}: {summary['successes']}/{summary['episodes']}", flush=True)
    command = (f"python bench/bench_compose.py {args.name} {' '.join(map(str, args.checkpoints))} --env {args.env}"
               f" --episodes {args.episodes} --seed {args.seed} --search-seed {args.search_seed}"
               f" --search-episodes {args.search_episodes} --envs {args.envs}"
               + (f" --n-action-steps {args.n_action_steps}" if args.n_action_steps else ""))
    record = {"env": args.env, "success_parts": parts, "success_composed": success_figure(summary), "weights": weights,
              "search": table, "episodes": args.episodes, "seeds": [args.seed, args.seed + args.episodes - 1],
              "machine": machine(), "command": command}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"compose_{args.name}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
