"""LeRobot's diffusion policy and ACT, trained on robopolicy's datasets and scored in robopolicy's envs.

The side-by-side for `bench_success.py`'s rows: the same LeRobot v3.0 dataset, the same number of
training samples (steps x batch), the same env, seeds and step limit — only the toolkit differs.

  # 1. train with LeRobot's own CLI (`lerobot-train`, its environment), timed
  python bench/bench_lerobot_success.py train --dataset datasets/square_lowdim_800_dart400 \\
      --policy diffusion --steps 15000 --batch-size 256 --out runs/lerobot_square_diffusion \\
      [--save-every 2500] [--resume] [--arg=--policy.down_dims=[32,64,128] ...]
  # 2. score its last checkpoint in robopolicy's env (robopolicy's episode runner, bench/lerobot_adapter.py)
  python bench/bench_lerobot_success.py evaluate --run runs/lerobot_square_diffusion \\
      --env robosuite/NutAssemblySquare --seed 100000 --episodes 50 --name lerobot_square_lowdim_diffusion \\
      [--n-action-steps 4 | --temporal-ensemble-coeff 0.01]   # inference settings (choose on validation seeds)

`--lerobot-python` (default /tmp/lerobot/bin/python) is the LeRobot environment that
`../shared/tools/setup_lerobot_venv.sh` builds. Evaluation runs `--workers` processes, each with one
env and one LeRobot policy worker at one torch thread, as robopolicy's evaluator does. The result goes
to bench/results/success_<name>.json in `bench_success.py`'s format, with the training record.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import queue
import shlex
import subprocess
import sys
import time
from pathlib import Path

from benchlib import command_line, machine, write_result

DEFAULT_PYTHON = "/tmp/lerobot/bin/python"


def train(args) -> None:
    """lerobot-train on the dataset, timed. With --resume, a run killed part-way continues from its
    last saved checkpoint (LeRobot's own --resume) and the wall time of every attempt is added up."""
    dataset = Path(args.dataset).resolve()
    info = json.loads((dataset / "meta" / "info.json").read_text())
    out = Path(args.out).resolve()
    lerobot_train = Path(args.lerobot_python).with_name("lerobot-train")
    command = [str(lerobot_train), f"--dataset.repo_id=local/{dataset.name}", f"--dataset.root={dataset}",
               f"--policy.type={args.policy}", "--policy.device=cpu", "--policy.push_to_hub=false",
               f"--steps={args.steps}", f"--batch_size={args.batch_size}", f"--num_workers={args.num_workers}",
               f"--save_freq={args.save_every or args.steps}", f"--log_freq={max(1, args.steps // 50)}",
               "--eval_freq=0", "--wandb.enable=false", f"--output_dir={out}", f"--seed={args.seed}", *args.arg]
    clock = out.parent / f"{out.name}.train_time.json"
    last = out / "checkpoints" / "last" / "pretrained_model" / "train_config.json"
    spent = json.loads(clock.read_text())["seconds"] if args.resume and clock.exists() else 0.0
    run = command
    if args.resume and last.exists():
        run = [str(lerobot_train), f"--config_path={last}", "--resume=true"]
    print(shlex.join(run), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    start = time.perf_counter()
    with subprocess.Popen(run, env=env) as proc:
        while True:
            try:
                proc.wait(timeout=30)
                break
            except subprocess.TimeoutExpired:
                clock.write_text(json.dumps({"seconds": spent + time.perf_counter() - start}))
    if proc.returncode:
        raise SystemExit(f"lerobot-train exited with status {proc.returncode}; rerun with --resume to continue")
    seconds = spent + time.perf_counter() - start
    clock.write_text(json.dumps({"seconds": seconds}))
    record = {"toolkit": "lerobot 0.4.4", "policy": args.policy, "dataset": str(Path(args.dataset)),
              "demos": info["total_episodes"], "demo_frames": info["total_frames"], "train_steps": args.steps,
              "batch_size": args.batch_size, "samples_seen": args.steps * args.batch_size,
              "train_seconds": seconds, "lerobot_command": shlex.join(command), "machine": machine(),
              "command": command_line()}
    (out / "train_record.json").write_text(json.dumps(record, indent=1))
    print(f"trained in {seconds / 60:.1f} min; record: {out / 'train_record.json'}")


def _episodes(checkpoint: str, python: str, env_name: str, seeds: list[int], max_steps: int | None,
              overrides: dict, results) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from lerobot_adapter import LeRobotExecutor

    from robopolicy.evaluate.rollout import run_episode
    from robopolicy.sim.registry import make_env

    executor = LeRobotExecutor(checkpoint, python, overrides)
    cameras = [k for k in executor.input_features if k.startswith("observation.image")]
    kwargs = {"images": bool(cameras)}
    if cameras:
        config = json.loads((Path(checkpoint) / "config.json").read_text())
        kwargs["image_size"] = config["input_features"][cameras[0]]["shape"][-1]
    env = make_env(env_name, **kwargs)
    try:
        for seed in seeds:
            result, _ = run_episode(env, executor, seed, max_steps)
            results.put(result.to_json())
    finally:
        executor.close()
        env.close()


def evaluate(args) -> None:
    from robopolicy.evaluate.evaluator import wilson_interval

    run = Path(args.run).resolve()
    checkpoint = run / "checkpoints" / "last" / "pretrained_model"
    seeds = [args.seed + i for i in range(args.episodes)]
    overrides = {}
    if args.n_action_steps is not None:
        overrides["n_action_steps"] = args.n_action_steps
    if args.temporal_ensemble_coeff is not None:  # ACT: a new chunk every step, averaged over time
        overrides.update(n_action_steps=1, temporal_ensemble_coeff=args.temporal_ensemble_coeff)
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    workers = [ctx.Process(target=_episodes, args=(str(checkpoint), args.lerobot_python, args.env,
                                                   seeds[w::args.workers], args.max_steps, overrides, results))
               for w in range(args.workers)]
    start = time.perf_counter()
    for p in workers:
        p.start()
    episodes = []
    while len(episodes) < len(seeds):
        try:
            episodes.append(results.get(timeout=5))
        except queue.Empty:
            if not any(p.is_alive() for p in workers):
                raise SystemExit(f"evaluation workers exited after {len(episodes)} of {len(seeds)} episodes")
            continue
        done = sum(e["success"] for e in episodes)
        print(f"\r{len(episodes)}/{len(seeds)} episodes, {done} successes", end="", flush=True)
    print()
    wall = time.perf_counter() - start
    for p in workers:
        p.join()
    episodes.sort(key=lambda e: e["seed"])
    successes = sum(e["success"] for e in episodes)
    trained = json.loads((run / "train_record.json").read_text())
    config = json.loads((checkpoint / "config.json").read_text())
    record = {"env": args.env, "head": f"lerobot {trained['policy']}", "episodes": len(episodes),
              "successes": successes, "success_rate": successes / len(episodes),
              "ci95": list(wilson_interval(successes, len(episodes))), "seeds": seeds,
              "mean_episode_length": sum(e["length"] for e in episodes) / len(episodes),
              "episodes_per_min": 60 * len(episodes) / wall, "eval_seconds": wall, "machine": machine(),
              **{k: trained[k] for k in ("demos", "demo_frames", "train_steps", "batch_size", "samples_seen",
                                         "train_seconds", "dataset", "lerobot_command")},
              "trained_on": args.trained_on, "policy_config": config, "inference_overrides": overrides,
              "command": command_line(),
              "train_command": trained["command"], "per_episode": episodes}
    write_result(f"success_{args.name}.json", record)
    print(f"{args.name}: {successes}/{len(episodes)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lerobot-python", default=DEFAULT_PYTHON)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a LeRobot policy on a dataset with lerobot-train, timed")
    t.add_argument("--dataset", required=True)
    t.add_argument("--policy", choices=["diffusion", "act"], required=True)
    t.add_argument("--steps", type=int, required=True)
    t.add_argument("--batch-size", type=int, required=True)
    t.add_argument("--num-workers", type=int, default=2)
    t.add_argument("--seed", type=int, default=1000)
    t.add_argument("--out", required=True)
    t.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (default: at the end only)")
    t.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    t.add_argument("--arg", action="append", default=[], help="one more lerobot-train argument (repeatable)")
    e = sub.add_parser("evaluate", help="score a lerobot-train run's last checkpoint in a robopolicy env")
    e.add_argument("--run", required=True)
    e.add_argument("--env", required=True)
    e.add_argument("--seed", type=int, default=100_000)
    e.add_argument("--episodes", type=int, default=50)
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--max-steps", type=int, default=None)
    inference = e.add_mutually_exclusive_group()
    inference.add_argument("--n-action-steps", type=int, default=None, help="actions executed per chunk (default: as trained)")
    inference.add_argument("--temporal-ensemble-coeff", type=float, default=None,
                   help="ACT: temporal ensembling with this coefficient (LeRobot's default 0.01), a chunk per step")
    e.add_argument("--name", required=True)
    e.add_argument("--trained-on", default="2-core CPU")
    args = parser.parse_args()
    train(args) if args.command == "train" else evaluate(args)


if __name__ == "__main__":
    main()
