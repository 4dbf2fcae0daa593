"""robosuite step time with camera observations, and proof that the faster render changes no pixel.

  python bench/bench_camera_step.py [--env robosuite/Lift] [--episodes 3] [--seed 100000]

Each episode is the scripted expert from one seed, run twice with the two 84x84 cameras (agentview
+ wrist): once rendering every camera with MuJoCo's reflection pass (robosuite as it comes), once
skipping the pass for cameras that cannot see the floor (robopolicy's default). The expert and the
physics do not depend on rendering, so the two runs visit the same states and every frame of both
cameras must be identical. A third run without cameras gives the simulator's own step time.
Times are the median of env.step over all steps (expert time excluded), one process, one thread.
Writes bench/results/camera_step_<env>.json.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchlib import machine, write_result

os.environ.setdefault("MUJOCO_GL", "egl")


def run(env_name: str, seed: int, images: bool, skip: bool) -> tuple[list[float], list[dict]]:
    from robopolicy.sim.registry import make_env, make_expert
    from robopolicy.sim.robosuite_env import RobosuiteEnv

    RobosuiteEnv.skip_hidden_reflections = skip
    env = make_env(env_name, images=images, image_size=84)
    expert = make_expert(env_name, env)
    obs, _ = env.reset(seed=seed)
    expert.reset()
    times, frames = [], []
    for _ in range(env.max_steps):
        action = expert.act(obs)
        start = time.perf_counter()
        obs, _, terminated, truncated, _ = env.step(action)
        times.append(time.perf_counter() - start)
        if images:
            frames.append({k: v for k, v in obs.items() if k.startswith("observation.images.")})
        if terminated or truncated:
            break
    env.close()
    return times, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="robosuite/Lift")
    parser.add_argument("--episodes", type=int, default=3)
    parser.add_argument("--seed", type=int, default=100_000)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    times = {"all_reflections": [], "hidden_reflections_skipped": [], "no_cameras": []}
    frames = compared = differing = 0
    for seed in range(args.seed, args.seed + args.episodes):
        t_all, f_all = run(args.env, seed, images=True, skip=False)
        t_skip, f_skip = run(args.env, seed, images=True, skip=True)
        t_raw, _ = run(args.env, seed, images=False, skip=True)
        times["all_reflections"] += t_all
        times["hidden_reflections_skipped"] += t_skip
        times["no_cameras"] += t_raw
        if len(f_all) != len(f_skip):
            raise SystemExit(f"seed {seed}: the two runs took {len(f_all)} and {len(f_skip)} steps")
        for a, b in zip(f_all, f_skip):
            for key in a:
                compared += a[key].size
                differing += int((a[key] != b[key]).sum())
            frames += 1
        print(f"seed {seed}: {len(f_all)} steps, median ms/step: all reflections"
              f" {1000 * np.median(t_all):.1f}, skipped where hidden {1000 * np.median(t_skip):.1f},"
              f" no cameras {1000 * np.median(t_raw):.1f}", flush=True)
    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    print(f"median ms/step: {ms}; pixels compared {compared}, differing {differing}")
    name = args.env.split("/")[-1].lower()
    command = f"python bench/bench_camera_step.py --env {args.env} --episodes {args.episodes} --seed {args.seed}"
    record = {"env": args.env, "cameras": ["agentview", "wrist"], "image_size": 84, "episodes": args.episodes,
              "steps": frames, "ms_per_step": ms, "pixel_values_compared": compared,
              "pixel_values_differing": differing, "machine": machine(), "command": command}
    write_result(f"camera_step_{name}.json", record)


if __name__ == "__main__":
    main()
