"""Where does a tabletop pick policy fail? Rollouts classified by where the gripper first closes.

  python bench/bench_pick_failures.py runs/<run> [--seed 200000] [--episodes 60] [--n-action-steps N]

Rolls the checkpoint out on `tabletop/pick` (one env, the policy's own cameras or state, the
instruction the seed draws, as `robopolicy eval` does) and sorts each episode into one of:

  success           the named cube ended in the bowl
  never closed      the gripper never got a close command: it hovered or wandered
  closed off cube   at its first close the gripper was more than a cube half-width (2 cm) from the
                    named cube in x/y, or more than that above it: it did not find the cube's place
  closed at cube    it closed on the named cube's place and still failed (slipped, dropped, late)

and says how often the first close was nearer another cube than the named one. Seeds default to the
validation seeds (200000, ...), so a diagnosis does not look at the evaluation seeds. Per-episode
records go to `bench/results/pick_failures_<run>.json` with `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchlib import command_line, machine  # noqa: E402

CLASSES = ("success", "never closed", "closed off cube", "closed at cube")


def rollouts(run: Path, seed: int, episodes: int, n_action_steps: int | None) -> list[dict]:
    from robopolicy.policy.execution import make_executor
    from robopolicy.policy.policy import Policy
    from robopolicy.sim.registry import make_env
    from robopolicy.sim.tabletop import COLORS, CUBE_HALF, parse_instruction

    policy = Policy.load(run / "checkpoints" / "last").eval()
    cameras = policy.spec.keys("camera")
    env = make_env("tabletop/pick", images=bool(cameras),
                   image_size=policy.spec.shape(cameras[0])[0] if cameras else 64)
    executor = make_executor(policy, "receding", n_action_steps)
    out = []
    for s in range(seed, seed + episodes):
        obs, _ = env.reset(seed=s)
        executor.reset(s)
        color = parse_instruction(env.task).color
        success, at_close = False, None
        for _ in range(env.max_steps):
            action = executor.act({**obs, "task": env.task})
            if at_close is None and action[-1] > 0:  # +1 closes the gripper
                at_close = (env.tcp_position(), {c: env.cube_position(c) for c in COLORS})
            obs, _, terminated, truncated, info = env.step(np.asarray(action, np.float32))
            success = success or bool(info.get("is_success"))
            if terminated or truncated:
                break
        record = {"seed": s, "instruction": env.task, "success": success}
        if at_close is not None:
            tcp, cubes = at_close
            offset = tcp - cubes[color]
            xy = {c: float(np.linalg.norm(tcp[:2] - p[:2])) for c, p in cubes.items()}
            record.update(xy_from_named_cube=xy[color], above_named_cube=float(offset[2]),
                          nearest_cube=min(xy, key=xy.get))
        if success:
            record["class"] = "success"
        elif at_close is None:
            record["class"] = "never closed"
        elif record["xy_from_named_cube"] > CUBE_HALF or record["above_named_cube"] > CUBE_HALF:
            record["class"] = "closed off cube"
        else:
            record["class"] = "closed at cube"
        record["named_cube"] = color
        out.append(record)
    env.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--seed", type=int, default=200000, help="first seed (default: the validation seeds)")
    parser.add_argument("--episodes", type=int, default=60)
    parser.add_argument("--n-action-steps", type=int, default=None, help="actions executed per chunk")
    parser.add_argument("--out", action="store_true", help="write bench/results/pick_failures_<run>.json")
    args = parser.parse_args()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    records = rollouts(args.run, args.seed, args.episodes, args.n_action_steps)
    counts = Counter(r["class"] for r in records)
    closed = [r for r in records if "nearest_cube" in r]
    wrong = sum(r["nearest_cube"] != r["named_cube"] for r in closed)
    print(f"machine: {machine()}")
    print(f"{args.run}: " + ", ".join(f"{c} {counts[c]}" for c in CLASSES) + f" of {len(records)};"
          f" first close nearer another cube than the named one: {wrong}/{len(closed)}")
    if args.out:
        result = {"run": str(args.run), "seeds": [args.seed, args.seed + args.episodes - 1],
                  "n_action_steps": args.n_action_steps, "counts": {c: counts[c] for c in CLASSES},
                  "first_close_nearer_another_cube": wrong, "episodes_that_closed": len(closed),
                  "episodes": records, "machine": machine(), "command": command_line()}
        path = Path(__file__).parent / "results" / f"pick_failures_{args.run.name}.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
