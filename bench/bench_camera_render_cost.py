"""Where a robosuite camera's render time goes: per triangle or per pixel.

  python bench/bench_camera_render_cost.py [--env robosuite/Lift] [--camera agentview] [--seed 100000]

Along one scripted-expert episode (every 10th step), renders the camera offscreen exactly as robosuite
does (MuJoCo's mjr_render into robosuite's 4x multisampled buffer, then the readback) at 84x84 and at
8x8 — the same scene geometry, 1/110 of the pixels — with MuJoCo's floor-reflection pass on (as
robosuite renders) and off. If the 8x8 render costs nearly what the 84x84 one does, the time is spent
per triangle (transforming, clipping and setting up the scene's triangles on the CPU), and no saving in
pixels, samples or readback can remove it. Also counts the triangles of the meshes the camera draws.
Writes bench/results/camera_render_cost_<env>_<camera>.json.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from benchlib import command_line, machine, write_result

os.environ.setdefault("MUJOCO_GL", "egl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="robosuite/Lift")
    parser.add_argument("--camera", default="agentview")
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=5, help="renders per size and state")
    args = parser.parse_args()

    import mujoco

    from robopolicy.sim.registry import make_env, make_expert

    env = make_env(args.env, images=True, image_size=84)
    expert = make_expert(args.env, env)
    obs, _ = env.reset(seed=args.seed)
    expert.reset()
    sim = env.raw.sim
    ctx = sim._render_context_offscreen
    render = type(ctx).render  # robosuite's own render, without robopolicy's shortcuts
    camera = sim.model.camera_name2id(args.camera)
    model = sim.model._model
    reflection = mujoco.mjtRndFlag.mjRND_REFLECTION
    shown = [g for g in range(model.ngeom) if ctx.vopt.geomgroup[model.geom_group[g]]
             and model.geom_rgba[g][3] > 0]
    triangles = int(sum(model.mesh_facenum[model.geom_dataid[g]] for g in shown
                        if model.geom_type[g] == mujoco.mjtGeom.mjGEOM_MESH))

    cases = {f"{size}px_reflection_{'on' if on else 'off'}": (size, on) for size in (84, 8) for on in (True, False)}
    times = {case: [] for case in cases}
    for step in range(env.max_steps):
        if step % 10 == 0:
            for case, (size, on) in cases.items():
                ctx.scn.flags[reflection] = int(on)
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    render(ctx, size, size, camera_id=camera)
                    ctx.read_pixels(size, size, depth=False)
                    times[case].append(time.perf_counter() - start)
        obs, _, terminated, truncated, _ = env.step(expert.act(obs))
        if terminated or truncated:
            break
    env.close()
    ms = {case: 1000 * float(np.median(v)) for case, v in times.items()}
    print(f"{args.camera}: {len(shown)} geoms drawn, {triangles} mesh triangles; median ms per render: "
          + ", ".join(f"{k} {v:.1f}" for k, v in ms.items()))
    name = args.env.split("/")[-1].lower()
    write_result(f"camera_render_cost_{name}_{args.camera}.json",
                 {"env": args.env, "camera": args.camera, "geoms_drawn": len(shown), "mesh_triangles": triangles,
                  "renders_per_case": len(times["84px_reflection_on"]), "ms_per_render": ms,
                  "machine": machine(), "command": command_line()})


if __name__ == "__main__":
    main()
