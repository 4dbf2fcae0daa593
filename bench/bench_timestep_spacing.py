"""A diffusion policy's few-step DDIM sampler with its timesteps spaced "leading" against "trailing".

  python bench/bench_timestep_spacing.py CHECKPOINT [CHECKPOINT ...] --env tabletop/pick --steps 4 \\
      [--validation-episodes 60] [--validation-seed 200000] [--episodes 50] [--seed 100000] \\
      [--evaluate LABEL ...] [--name NAME]

The same weights sampled both ways (`policy.diffusion.timestep_spacing`; the weights do not depend on
it): every checkpoint is scored with each spacing on the validation seeds; the checkpoints named by
`--evaluate` (their folder names, e.g. step_003600) are also scored on the evaluation seeds, by
`robopolicy eval`'s evaluator with its `timestep_spacing` option (`--timestep-spacing` on the command
line). Records bench/results/timestep_spacing_<name>.json.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchlib import command_line, machine, success_figure, write_result

SPACINGS = ("leading", "trailing")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", type=Path, nargs="+")
    parser.add_argument("--env", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--validation-episodes", type=int, default=60)
    parser.add_argument("--validation-seed", type=int, default=200_000)
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--evaluate", nargs="*", default=[], metavar="LABEL")
    parser.add_argument("--name", default=None)
    args = parser.parse_args()

    from robopolicy.evaluate.config import EvalConfig
    from robopolicy.evaluate.evaluator import evaluate

    def score(checkpoint: Path, spacing: str, episodes: int, seed: int, out: Path) -> dict:
        cfg = EvalConfig(episodes=episodes, seed=seed, envs=episodes, inference_steps=args.steps, videos=0,
                         timestep_spacing=spacing)
        return success_figure(evaluate(checkpoint, args.env, cfg, out, progress=False).summary)

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for checkpoint in args.checkpoints:
            row = rows.setdefault(checkpoint.name, {"checkpoint": str(checkpoint)})
            for spacing in SPACINGS:
                label = f"{checkpoint.name}_{spacing}"
                row[f"validation_{spacing}"] = score(checkpoint, spacing, args.validation_episodes,
                                                     args.validation_seed, Path(tmp) / f"val_{label}")
                if checkpoint.name in args.evaluate:
                    row[f"evaluation_{spacing}"] = score(checkpoint, spacing, args.episodes, args.seed,
                                                         Path(tmp) / f"eval_{label}")
                print(checkpoint.name, spacing, {k: v["successes"] for k, v in row.items() if k != "checkpoint"},
                      flush=True)
    name = args.name or args.checkpoints[0].parent.parent.name
    record = {"env": args.env, "inference_steps": args.steps,
              "validation_seeds": [args.validation_seed, args.validation_seed + args.validation_episodes - 1],
              "evaluation_seeds": [args.seed, args.seed + args.episodes - 1], "checkpoints": rows,
              "machine": machine(), "command": command_line()}
    write_result(f"timestep_spacing_{name}.json", record)


if __name__ == "__main__":
    main()
