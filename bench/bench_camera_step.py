"""robosuite step time with camera observations, and proof that the faster renders change no pixel.

  python bench/bench_camera_step.py [--env robosuite/Lift] [--episodes 3] [--seed 100000]

Each episode is the scripted expert from one seed, run three times with the two 84x84 cameras
(agentview + wrist): rendering every camera with MuJoCo's reflection pass and every geom (robosuite as
it comes); skipping the pass for cameras that cannot see the floor; and skipping, for those cameras,
also every geom they cannot show (robopolicy's default, robopolicy/sim/robosuite_render.py). The
expert and the physics do not depend on rendering, so the runs visit the same states and every frame
of both cameras must be identical to the first run's. A fourth run without cameras gives the
simulator's own step time.
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


def run(env_name: str, seed: int, images: bool, skip: bool, cull: bool) -> tuple[list[float], list[dict]]:
    from robopolicy.sim.registry import make_env, make_expert
    from robopolicy.sim.robosuite_env import RobosuiteEnv

    RobosuiteEnv.skip_hidden_reflections = skip
    RobosuiteEnv.cull_outside_view = cull
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
    modes = {"all_reflections": dict(images=True, skip=False, cull=False),
             "hidden_reflections_skipped": dict(images=True, skip=True, cull=False),
             "hidden_reflections_and_geoms_skipped": dict(images=True, skip=True, cull=True),
             "no_cameras": dict(images=False, skip=True, cull=True)}
    times = {mode: [] for mode in modes}
    frames = 0
    compared = {mode: 0 for mode in modes if mode not in ("all_reflections", "no_cameras")}
    differing = dict.fromkeys(compared, 0)
    for seed in range(args.seed, args.seed + args.episodes):
        seen = {}
        for mode, kw in modes.items():
            step_times, seen[mode] = run(args.env, seed, **kw)
            times[mode] += step_times
        reference = seen["all_reflections"]
        for mode in compared:
            if len(seen[mode]) != len(reference):
                raise SystemExit(f"seed {seed}: {mode} took {len(seen[mode])} steps, robosuite's render {len(reference)}")
            for a, b in zip(reference, seen[mode]):
                for key in a:
                    compared[mode] += a[key].size
                    differing[mode] += int((a[key] != b[key]).sum())
        frames += len(reference)
        print(f"seed {seed}: {len(reference)} steps, median ms/step: "
              + ", ".join(f"{mode} {1000 * np.median(times[mode][-len(reference):]):.1f}" for mode in modes
                          if mode != "no_cameras"), flush=True)
    ms = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    print(f"median ms/step: {ms}; pixel values compared {compared}, differing {differing}")
    name = args.env.split("/")[-1].lower()
    command = f"python bench/bench_camera_step.py --env {args.env} --episodes {args.episodes} --seed {args.seed}"
    record = {"env": args.env, "cameras": ["agentview", "wrist"], "image_size": 84, "episodes": args.episodes,
              "steps": frames, "ms_per_step": ms, "pixel_values_compared": compared,
              "pixel_values_differing": differing, "machine": machine(), "command": command}
    write_result(f"camera_step_{name}.json", record)


if __name__ == "__main__":
    main()
