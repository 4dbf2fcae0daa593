"""A diffusion policy's few-step DDIM sampler with its timesteps spaced "leading" against "trailing".

  python bench/bench_timestep_spacing.py CHECKPOINT [CHECKPOINT ...] --env tabletop/pick --steps 4 \\
      [--validation-episodes 60] [--validation-seed 200000] [--episodes 50] [--seed 100000] \\
      [--evaluate LABEL ...] [--name NAME]

The same weights sampled both ways (`policy.diffusion.timestep_spacing`; the weights do not depend on
it): every checkpoint is scored with each spacing on the validation seeds; the checkpoints named by
`--evaluate` (their folder names, e.g. step_003600) are also scored on the evaluation seeds. Each
variant is a copy of the checkpoint folder with only the spacing in its config changed, evaluated by
`robopolicy eval`'s evaluator. Records bench/results/timestep_spacing_<name>.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from benchlib import command_line, machine, success_figure, write_result

SPACINGS = ("leading", "trailing")


def with_spacing(checkpoint: Path, spacing: str, folder: Path) -> Path:
    """A copy of `checkpoint` whose sampler spaces its timesteps as `spacing`."""
    target = folder / f"{checkpoint.name}_{spacing}"
    shutil.copytree(checkpoint, target, ignore=shutil.ignore_patterns("training_state"))
    config = json.loads((target / "config.json").read_text())
    config["spec"]["config"]["diffusion"]["timestep_spacing"] = spacing
    (target / "config.json").write_text(json.dumps(config, indent=1))
    return target


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

    def score(checkpoint: Path, episodes: int, seed: int, out: Path) -> dict:
        cfg = EvalConfig(episodes=episodes, seed=seed, envs=episodes, inference_steps=args.steps, videos=0)
        return success_figure(evaluate(checkpoint, args.env, cfg, out, progress=False).summary)

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for checkpoint in args.checkpoints:
            row = rows.setdefault(checkpoint.name, {"checkpoint": str(checkpoint)})
            for spacing in SPACINGS:
                variant = with_spacing(checkpoint, spacing, Path(tmp))
                row[f"validation_{spacing}"] = score(variant, args.validation_episodes, args.validation_seed,
                                                     Path(tmp) / f"val_{variant.name}")
                if checkpoint.name in args.evaluate:
                    row[f"evaluation_{spacing}"] = score(variant, args.episodes, args.seed,
                                                         Path(tmp) / f"eval_{variant.name}")
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
