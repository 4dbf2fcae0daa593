"""Does a tabletop policy reach for the cube its instruction names? A probe faster than rollouts.

  python bench/bench_instruction_probe.py runs/<run> [runs/<other run> ...] [--layouts 60]

For each evaluation layout (seeds 100000, 100001, ..., the ones `robopolicy eval` uses) the env is
reset once per instruction of `tabletop/pick` ("put the {red|green|blue} cube in the bowl"; the
layout does not change with the instruction) and the policy predicts one chunk from that first
frame. The chunk's first `n_action_steps` moves in x/y are summed: the cube whose direction from the
gripper is closest to that motion (cosine) is the one the policy reaches for. Printed per run:
how often that is the named cube (a policy blind to the instruction manages ~1/3, whatever it
learned), and how often the three instructions lead to three different cubes on a layout.
Every rollout decides its target in these first steps, so this separates "follows the
instruction" from "grasps well" without simulating whole episodes.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchlib import machine  # noqa: E402


def probe(run: Path, layouts: int) -> dict:
    from robopolicy.evaluate.config import EvalConfig
    from robopolicy.policy.policy import Policy
    from robopolicy.sim.registry import make_env
    from robopolicy.sim.tabletop import COLORS, INSTRUCTIONS

    policy = Policy.load(run / "checkpoints" / "last").eval()
    images = bool(policy.spec.keys("camera"))
    size = policy.spec.shape(policy.spec.keys("camera")[0])[0] if images else 64
    env = make_env("tabletop/pick", images=images, image_size=size)
    steps = slice(policy.chunk_start, policy.chunk_start + policy.config.n_action_steps)
    first_seed = EvalConfig().seed  # the layouts `robopolicy eval` scores
    named, distinct = 0, 0
    for i in range(layouts):
        chosen = []
        for instruction in INSTRUCTIONS["pick"]:
            obs, _ = env.reset(seed=first_seed + i, options={"instruction": instruction.text})
            chunk = policy.predict_chunk({**obs, "task": instruction.text}, generator=torch.Generator().manual_seed(0))
            motion = chunk[steps, :2].sum(axis=0)
            tcp = env.tcp_position()[:2]
            cosines = [_cosine(motion, env.cube_position(c)[:2] - tcp) for c in COLORS]
            chosen.append(COLORS[int(np.argmax(cosines))])
            named += chosen[-1] == instruction.color
        distinct += len(set(chosen)) == len(COLORS)
    env.close()
    return {"run": str(run), "reaches": layouts * len(COLORS), "toward_named_cube": named,
            "layouts": layouts, "three_instructions_three_cubes": distinct}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-9))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--layouts", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    print(f"machine: {machine()}")
    for run in args.runs:
        r = probe(run, args.layouts)
        print(f"{r['run']}: first reach toward the named cube {r['toward_named_cube']}/{r['reaches']}"
              f" ({r['toward_named_cube'] / r['reaches']:.0%}; blind ~33%), three instructions -> three different"
              f" cubes on {r['three_instructions_three_cubes']}/{r['layouts']} layouts")


if __name__ == "__main__":
    main()
