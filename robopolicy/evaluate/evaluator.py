"""`robopolicy eval`: parallel simulation rollouts of a checkpoint, with an honest score.

Episode i runs from seed `seed + i` (disjoint from the demonstration seeds, which start at 0), in
one of `workers` spawned processes that each load the checkpoint once and run single-threaded
torch — so the success count does not depend on the number of workers, and reruns agree.
A worker that raises on an episode, dies, or hangs past the episode timeout is replaced; the
episode is retried once and counted as a failure (with the error recorded) if it breaks again.
Outputs: eval.json (stable schema, every setting that can change the score), episodes.jsonl, a
summary plot and mp4 videos of successful and failed episodes.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import queue
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from robopolicy.errors import ConfigError, EnvError, RobopolicyError
from robopolicy.evaluate.config import EvalConfig
from robopolicy.evaluate.report import write_report
from robopolicy.evaluate.rollout import EpisodeResult, VideoQuota, run_episode, write_video

SCHEMA_VERSION = 1
MAX_STARTUP_DEATHS = 3


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well-behaved at 0% and 100%)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, center - half)
    hi = 1.0 if successes == n else min(1.0, center + half)  # exact at the edges, not 0.9999999
    return lo, hi


@dataclass
class EvalResult:
    out_dir: Path
    episodes: list[EpisodeResult]
    summary: dict

    @property
    def success_rate(self) -> float:
        return self.summary["success_rate"]


def env_kwargs_for(policy_spec, cfg: EvalConfig, record: bool) -> dict:
    """Env settings that give the policy exactly the observations it was trained on."""
    cameras = [f.key for f in policy_spec.features if f.kind == "camera"]
    kwargs: dict = {"images": bool(cameras)}
    if cameras:
        kwargs["image_size"] = cfg.image_size or policy_spec.shape(cameras[0])[0]
    if cfg.max_steps:
        kwargs["max_steps"] = cfg.max_steps
    if record:
        kwargs["render_size"] = 256
    return kwargs


def load_policy(checkpoint: str | Path, cfg: EvalConfig):
    """The checkpoint's policy, or with `cfg.compose` its composition with the others (GPC)."""
    if cfg.compose:
        if cfg.timestep_spacing:
            raise ConfigError("timestep_spacing with compose: composed policies each sample with their own spacing;"
                              " give one of the two")
        from robopolicy.policy.compose import load_composed

        return load_composed([str(checkpoint), *cfg.compose], cfg.compose_weights, cfg.weights)
    from robopolicy.policy.policy import Policy

    return Policy.load(checkpoint, weights=cfg.weights, timestep_spacing=cfg.timestep_spacing)


def _worker(worker_id: int, checkpoint: str, env_name: str, cfg: EvalConfig, video_dir: str | None,
            quota: tuple[int, int], labelling: tuple[bool, float], tasks: mp.Queue, results: mp.Queue) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    import torch

    torch.set_num_threads(1)  # one thread per worker: deterministic, and workers do not fight for cores
    from robopolicy.policy.execution import make_executor
    from robopolicy.sim.registry import make_env, make_expert

    label, beta = labelling
    try:
        policy = load_policy(checkpoint, cfg)
        videos = VideoQuota(*quota) if video_dir else VideoQuota(0, 0)
        env = make_env(env_name, **env_kwargs_for(policy.spec, cfg, record=video_dir is not None))
        missing = [k for k in policy.observation_keys if k not in env.observation_space.spaces]
        if missing:
            raise EnvError(f"env {env_name} does not provide {missing} that the policy reads")
        executor = make_executor(policy, cfg.execution, cfg.n_action_steps, cfg.inference_steps, cfg.ensemble_decay)
        expert = make_expert(env_name, env) if label else None
    except Exception as err:
        results.put(("fatal", worker_id, f"{type(err).__name__}: {err}"))
        return
    results.put(("ready", worker_id, None))
    parent = mp.parent_process()
    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                break  # the evaluation was killed: stop instead of waiting (and holding a core) forever
            continue
        if task is None:
            break
        seed, attempt = task
        results.put(("start", worker_id, (seed, attempt)))
        try:
            record = videos.wants_more
            result, frames = run_episode(env, executor, seed, cfg.max_steps, record=record, expert=expert, beta=beta)
            result.attempts = attempt
            if record and frames and videos.keep(result.success):
                name = f"episode_{seed}_{'success' if result.success else 'failure'}.mp4"
                result.video = str(write_video(frames, Path(video_dir) / name, fps=20))
            results.put(("done", worker_id, result))
        except Exception:
            error = traceback.format_exc(limit=4).strip().splitlines()[-1]
            results.put(("error", worker_id, (seed, attempt, error)))
    env.close()


class _Pool:
    """Spawned evaluation workers with crash / hang detection."""

    def __init__(self, n: int, args: tuple):
        self.ctx = mp.get_context("spawn")
        self.args = args
        self.tasks = self.ctx.Queue()
        self.results = self.ctx.Queue()
        self.procs: dict[int, mp.Process] = {}
        self.running: dict[int, tuple[int, int, float]] = {}  # worker -> (seed, attempt, started)
        self.ready: set[int] = set()  # workers that finished starting up
        self.startup_deaths = 0  # workers that died before they were ready (a broken install, not an episode)
        self.next_id = 0
        for _ in range(n):
            self.spawn()

    def spawn(self) -> None:
        wid = self.next_id
        self.next_id += 1
        p = self.ctx.Process(target=_worker, args=(wid, *self.args, self.tasks, self.results), daemon=True)
        p.start()
        self.procs[wid] = p

    def kill(self, wid: int) -> None:
        p = self.procs.pop(wid, None)
        if p is not None and p.is_alive():
            p.terminate()
            p.join(5)
        self.running.pop(wid, None)

    def close(self) -> None:
        for _ in self.procs:
            self.tasks.put(None)
        for wid, p in list(self.procs.items()):
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()


def evaluate(checkpoint: str | Path, env_name: str, cfg: EvalConfig, out_dir: str | Path,
             progress: bool = True, episode_timeout_s: float | None = None, label_with_expert: bool = False,
             beta: float = 0.0, seeds: list[int] | None = None,
             on_episode: Callable[[EpisodeResult], None] | None = None) -> EvalResult:
    """Run cfg.episodes rollouts of the checkpoint in env_name; write the report into out_dir.

    `label_with_expert` (DAgger): the env's scripted expert shadows every rollout and each
    episode's `labels` hold the visited observations with the expert's actions; `beta` is the
    probability that a step executes the expert's action instead of the policy's.
    `seeds` replaces the config's seed range (a resumed DAgger round runs only the seeds it has
    not saved yet); `on_episode` is called in this process with each episode as it finishes, so a
    caller can save it before the others are done.
    """
    from robopolicy.policy.policy import checkpoint_hash
    from robopolicy.sim.registry import entry, require_expert

    checkpoint = Path(checkpoint).resolve()
    entry(env_name)  # unknown env names fail before any process starts
    if label_with_expert:
        require_expert(env_name)
    if cfg.envs:
        from robopolicy.evaluate.batched import check_batchable

        check_batchable(cfg, label_with_expert)
    policy = load_policy(checkpoint, cfg)  # fails fast on a bad checkpoint
    seeds = [cfg.seed + i for i in range(cfg.episodes)] if seeds is None else list(seeds)
    if not seeds:
        raise RobopolicyError(f"episodes must be >= 1, got {len(seeds)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    video_dir = out_dir / "videos" if cfg.videos > 0 and not cfg.envs else None  # batched: no videos
    if video_dir is not None:
        video_dir.mkdir(exist_ok=True)
        for old in video_dir.glob("episode_*.mp4"):
            old.unlink()
    done: dict[int, EpisodeResult] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(seeds), desc=f"eval {env_name}", unit="episode", dynamic_ncols=True)

    def finished(result: EpisodeResult) -> None:
        done[result.seed] = result
        if on_episode is not None:
            on_episode(result)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(success=f"{sum(r.success for r in done.values())}/{len(done)}")

    start = time.perf_counter()
    try:
        if cfg.envs:
            from robopolicy.evaluate.batched import run_batched

            workers = run_batched(policy, env_name, cfg, seeds, env_kwargs_for(policy.spec, cfg, record=False), finished)
        else:
            workers = max(1, min(cfg.workers, len(seeds)))
            _run_pool(checkpoint, env_name, cfg, seeds, workers, video_dir, (label_with_expert, beta),
                      episode_timeout_s, done, finished, bar)
    finally:
        if bar is not None:
            bar.close()
    wall = time.perf_counter() - start
    episodes = [done[s] for s in seeds]
    _prune_videos(episodes, cfg.videos)
    summary = _summary(checkpoint, env_name, cfg, policy, episodes, wall, workers, checkpoint_hash(checkpoint))
    (out_dir / "eval.json").write_text(json.dumps(summary, indent=1))
    (out_dir / "episodes.jsonl").write_text("".join(json.dumps(e.to_json()) + "\n" for e in episodes))
    _plot(out_dir, episodes, summary)
    write_report(out_dir, summary, [e.to_json() for e in episodes])
    if all(e.error for e in episodes):
        first = episodes[0]
        raise RobopolicyError(f"every one of the {len(episodes)} episodes crashed (report: {out_dir / 'eval.json'});"
                              f" seed {first.seed}: {first.error}")
    return EvalResult(out_dir=out_dir, episodes=episodes, summary=summary)


def _run_pool(checkpoint: Path, env_name: str, cfg: EvalConfig, seeds: list[int], workers: int, video_dir: Path | None,
              labelling: tuple[bool, float], episode_timeout_s: float | None, done: dict,
              finished: Callable[[EpisodeResult], None], bar) -> None:
    """One policy per worker process, one episode at a time each; crashed or hung workers are replaced."""
    per_worker = math.ceil(cfg.videos / 2 / workers) if cfg.videos else 0
    timeout = episode_timeout_s or max(300.0, 3.0 * (cfg.max_steps or 400))
    pool = _Pool(workers, (str(checkpoint), env_name, cfg, str(video_dir) if video_dir else None,
                           (per_worker, per_worker), labelling))
    for s in seeds:
        pool.tasks.put((s, 1))
    try:
        while len(done) < len(seeds):
            try:
                kind, wid, payload = pool.results.get(timeout=1.0)
            except queue.Empty:
                _check_workers(pool, done, timeout)
                continue
            if kind == "fatal":
                raise RobopolicyError(f"evaluation worker could not start: {payload}")
            if kind == "ready":
                pool.ready.add(wid)
            elif kind == "start":
                pool.running[wid] = (*payload, time.perf_counter())
            elif kind == "done":
                pool.running.pop(wid, None)
                finished(payload)
            elif kind == "error":
                pool.running.pop(wid, None)
                seed, attempt, error = payload
                _retry_or_fail(pool, done, seed, attempt, error, bar)
    finally:
        pool.close()


def _check_workers(pool: _Pool, done: dict, timeout: float) -> None:
    """Replace workers that died or hang; their episode is retried once, then counted failed."""
    now = time.perf_counter()
    for wid, p in list(pool.procs.items()):
        held = pool.running.get(wid)
        dead = not p.is_alive()
        hung = held is not None and now - held[2] > timeout
        if dead or hung:
            pool.kill(wid)
            if dead and wid not in pool.ready:
                pool.startup_deaths += 1
                if pool.startup_deaths >= MAX_STARTUP_DEATHS:
                    raise RobopolicyError(f"evaluation workers keep dying before they start (exit code {p.exitcode},"
                                          f" {pool.startup_deaths} times); run one episode with --workers 1 to see why")
            pool.spawn()
            if held is not None:
                reason = f"worker exited with code {p.exitcode}" if dead else f"episode exceeded {timeout:.0f} s"
                _retry_or_fail(pool, done, held[0], held[1], reason, None)


def _retry_or_fail(pool: _Pool, done: dict, seed: int, attempt: int, error: str, bar) -> None:
    if attempt < 2:
        pool.tasks.put((seed, attempt + 1))
        return
    done[seed] = EpisodeResult(seed=seed, success=False, length=0, first_success_step=None, inferences=0,
                               seconds=0.0, error=error, attempts=attempt)
    if bar is not None:
        bar.update(1)


def _prune_videos(episodes: list[EpisodeResult], limit: int) -> None:
    """Keep at most `limit` videos, half successes and half failures where both exist."""
    with_video = [e for e in episodes if e.video]
    succ = [e for e in with_video if e.success]
    fail = [e for e in with_video if not e.success]
    keep_fail = min(len(fail), limit // 2 if succ else limit)
    keep_succ = min(len(succ), limit - keep_fail)
    keep = {id(e) for e in succ[:keep_succ] + fail[:keep_fail]}
    for e in with_video:
        if id(e) not in keep:
            Path(e.video).unlink(missing_ok=True)
            e.video = None


def _summary(checkpoint: Path, env_name: str, cfg: EvalConfig, policy, episodes: list[EpisodeResult], wall: float,
             workers: int, content_hash: str) -> dict:
    from robopolicy.system import versions

    n = len(episodes)
    successes = sum(e.success for e in episodes)
    lo, hi = wilson_interval(successes, n)
    pc = policy.config
    head_steps = {"diffusion": pc.diffusion.num_inference_steps, "flow": pc.flow.num_inference_steps, "act": 1}
    lengths = [e.length for e in episodes if e.error is None]
    success_lengths = [e.first_success_step for e in episodes if e.success]
    return {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
        "env": env_name,
        "checkpoint": {"path": str(checkpoint), "sha256": content_hash, "weights": cfg.weights},
        "composed_with": ({"checkpoints": list(cfg.compose), "weights": policy.weights} if cfg.compose else None),
        "policy": {"head": pc.head, "horizon": pc.horizon, "n_obs_steps": pc.n_obs_steps,
                   "inference_steps": cfg.inference_steps or head_steps[pc.head],
                   "timestep_spacing": pc.diffusion.timestep_spacing if pc.head == "diffusion" else None,
                   "execution": cfg.execution, "n_action_steps": 1 if cfg.execution == "ensemble"
                   else (cfg.n_action_steps or pc.n_action_steps),
                   "ensemble_decay": cfg.ensemble_decay if cfg.execution == "ensemble" else None},
        "episodes": n,
        "seeds": [e.seed for e in episodes],
        "max_steps": cfg.max_steps,
        "successes": successes,
        "success_rate": successes / n if n else 0.0,
        "ci95": [lo, hi],
        "mean_episode_length": sum(lengths) / len(lengths) if lengths else None,
        "mean_steps_to_success": sum(success_lengths) / len(success_lengths) if success_lengths else None,
        "per_task": _per_task(episodes),
        "failed_runs": [{"seed": e.seed, "error": e.error} for e in episodes if e.error],
        "all_crashed": bool(episodes) and all(e.error for e in episodes),
        "videos": [e.video for e in episodes if e.video],
        "timing": {"wall_s": wall, "episodes_per_min": 60.0 * n / wall if wall > 0 else None, "workers": workers,
                   "batched_envs": cfg.envs},
        "versions": versions(),
    }


def _per_task(episodes: list[EpisodeResult]) -> dict:
    """Success per instruction, for multi-task and language-conditioned envs."""
    out: dict[str, dict] = {}
    for e in episodes:
        row = out.setdefault(e.task, {"episodes": 0, "successes": 0})
        row["episodes"] += 1
        row["successes"] += int(e.success)
    for row in out.values():
        row["success_rate"] = row["successes"] / row["episodes"]
        row["ci95"] = list(wilson_interval(row["successes"], row["episodes"]))
    return out


def _plot(out_dir: Path, episodes: list[EpisodeResult], summary: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    rate, (lo, hi) = summary["success_rate"], summary["ci95"]
    ax1.bar(["success rate"], [rate], yerr=[[rate - lo], [hi - rate]], capsize=8, color="tab:green")
    ax1.set_ylim(0, 1.05)
    ax1.set_title(f"{summary['successes']}/{summary['episodes']} (95% CI {lo:.2f}-{hi:.2f})")
    ok = [e.length for e in episodes if e.success]
    bad = [e.length for e in episodes if not e.success and e.error is None]
    ax2.hist([ok, bad], bins=20, stacked=True, label=["success", "failure"], color=["tab:green", "tab:red"])
    ax2.set_xlabel("episode length (steps)")
    ax2.legend()
    fig.suptitle(f"{summary['env']} — {summary['policy']['head']}")
    fig.tight_layout()
    fig.savefig(out_dir / "summary.png", dpi=100)
    plt.close(fig)
