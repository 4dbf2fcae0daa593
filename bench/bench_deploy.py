"""Deployment figures: loop timing under async inference, deploy-vs-eval success, server round trip.

  python bench/bench_deploy.py --checkpoint runs/quickstart_lift/checkpoints/last [--episodes 20]
      [--env robosuite/Lift] [--strategies sync,async,rtc]

1. The control loop on SimRobot(--env, robosuite/Lift by default) at 20 Hz and 50 Hz for `--seconds`,
   each strategy, with inference slowed to 50-100 ms per chunk (`--inference-steps`): period error p50/p99,
   missed actions, missed deadlines.
2. Task success of deployments (the real-time loop on SimRobot, each of `--strategies`) on the
   evaluation seeds, next to offline `robopolicy eval` on the same seeds.
3. Policy-server round trip on loopback: client-side request time vs server-side inference time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import machine


def loop_timing(checkpoint: str, env: str, hz: float, strategy: str, seconds: float, inference_steps: int) -> dict:
    from robopolicy.deploy.run import deploy
    from robopolicy.deploy.sim_robot import SimRobot
    from robopolicy.policy.policy import Policy

    policy = Policy.load(checkpoint)
    report = deploy(policy, SimRobot(env, seed=100_000), hz=hz, duration_s=seconds, strategy=strategy,
                    inference_steps=inference_steps, stop_when_done=False)
    return report.summary()


def deploy_success(checkpoint: str, env: str, episodes: int, strategy: str) -> tuple[int, int]:
    from robopolicy.deploy.run import deploy
    from robopolicy.deploy.sim_robot import SimRobot
    from robopolicy.policy.policy import Policy

    policy = Policy.load(checkpoint)
    wins = 0
    for i in range(episodes):
        seed = 100_000 + i
        report = deploy(policy, SimRobot(env, seed=seed), hz=20, strategy=strategy, seed=seed)
        wins += bool(report.success)
    return wins, episodes


def offline_success(checkpoint: str, env: str, episodes: int) -> tuple[int, int]:
    from robopolicy.evaluate.config import EvalConfig
    from robopolicy.evaluate.evaluator import evaluate

    with tempfile.TemporaryDirectory() as out:
        s = evaluate(checkpoint, env, EvalConfig(env=env, episodes=episodes, workers=2, videos=0), out,
                     progress=False).summary
    return s["successes"], s["episodes"]


def server_round_trip(checkpoint: str, env_name: str, requests: int = 100) -> dict:
    import torch

    from robopolicy.deploy.client import PolicyClient
    from robopolicy.deploy.server import PolicyServer
    from robopolicy.policy.policy import Policy
    from robopolicy.sim.registry import make_env

    policy = Policy.load(checkpoint)
    server = PolicyServer(policy, token="bench", port=0).start()
    client = PolicyClient(f"ws://127.0.0.1:{server.port}", "bench")
    env = make_env(env_name)
    obs, _ = env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    total, local = [], []
    for _ in range(requests):
        start = time.perf_counter()
        client.predict_chunk(obs, generator=gen)
        total.append(time.perf_counter() - start)
        start = time.perf_counter()
        policy.predict_chunk(obs, generator=gen)
        local.append(time.perf_counter() - start)
    server.shutdown()
    total_ms, local_ms = np.median(total) * 1000, np.median(local) * 1000
    return {"round_trip_ms_p50": float(total_ms), "round_trip_ms_p99": float(np.percentile(total, 99) * 1000),
            "local_inference_ms_p50": float(local_ms), "transport_overhead_ms": float(total_ms - local_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--env", default="robosuite/Lift", help="the simulated robot's env (and the offline eval's)")
    parser.add_argument("--strategies", default="sync,async,rtc", help="deployment strategies to run, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--inference-steps", type=int, default=10)
    parser.add_argument("--episodes", type=int, default=20)
    parser.add_argument("--parts", default="loop,success,server", help="comma-separated subset to run")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "deploy.json")
    args = parser.parse_args()
    os.environ.setdefault("MUJOCO_GL", "egl")
    results: dict = {"command": "python bench/bench_deploy.py " + " ".join(sys.argv[1:]), "machine": machine(),
                     "checkpoint": args.checkpoint, "env": args.env, "loop": [], "success": {}}
    parts = set(args.parts.split(","))
    strategies = args.strategies.split(",")
    for hz in (20, 50) if "loop" in parts else ():
        for strategy in strategies:
            s = loop_timing(args.checkpoint, args.env, hz, strategy, args.seconds, args.inference_steps)
            row = {"hz": hz, "strategy": strategy, **{k: s[k] for k in ("steps", "period_error_ms_p50",
                   "period_error_ms_p99", "period_error_ms_max", "missed_actions", "missed_deadlines")},
                   "inference_ms_p50": s["inference"]["latency_ms_p50"], "inference_ms_p99": s["inference"]["latency_ms_p99"]}
            results["loop"].append(row)
            print(json.dumps(row), flush=True)
    if "success" in parts:
        results["success"]["offline_eval"] = offline_success(args.checkpoint, args.env, args.episodes)
        for strategy in strategies:
            wins = deploy_success(args.checkpoint, args.env, args.episodes, strategy)
            results["success"][f"deploy_{strategy}"] = wins
        print(json.dumps(results["success"]), flush=True)
    if "server" in parts:
        results["server"] = server_round_trip(args.checkpoint, args.env)
        print(json.dumps(results["server"]), flush=True)
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
