"""`robopolicy collect`: scripted-expert demonstrations written as a LeRobot v3.0 dataset.

Worker processes each own an env and its expert and run whole episodes for the seeds they are
handed; the parent writes finished episodes in seed order, so the dataset is the same whatever the
number of workers. Frame t holds the observation before action t. Every kept episode is on disk
before the next one is written (a durable `DatasetWriter`): a collection killed at any moment
keeps all its saved episodes, and `resume` continues it with the same seeds. An episode ends a few steps
after success (the expert keeps holding), or at the step limit; failed attempts are dropped unless
`keep_failed`, and the collector moves on to the next seed until enough episodes are kept.

`noise` (DART, Laskey et al. 2017) executes the expert's action plus Gaussian noise of that
standard deviation (in action units) on the arm's dimensions and records the expert's clean action.
The demonstrations then visit the states a slightly-off policy reaches, each labelled with how the
expert gets back. Dimensions named "gripper" and those the expert holds at exactly 0 (the rotation
of experts that never turn) are not perturbed: nothing would ever correct them. Such episodes are
tagged `source: dart` in the episode table.

`degrade` turns that fraction of the episodes (chosen by seed) into successful but bad takes —
shaky, hesitant or with detours (robopolicy.sim.degrade) — tagged `source: degraded-<kind>`, the
known answer against which data-quality scores are checked.

`every_instruction` records each layout (seed) once per instruction the env knows (`env.tasks`),
one after another. With one instruction per layout, a policy can learn which object each training
scene wants from the scene itself and never read its instruction; when every scene appears with
every instruction, only the instruction tells the demonstrations apart.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from robopolicy.errors import EnvError, RobopolicyError

STEPS_AFTER_SUCCESS = 10


@dataclass
class Episode:
    seed: int
    success: bool
    task: str
    frames: list[dict] = field(default_factory=list)
    error: str | None = None
    index: int = -1  # the attempt's place in the collection order (seed order, then instruction order)
    source: str | None = None  # episode-table tag: None (a plain demonstration), "dart", "degraded-<kind>"


@dataclass
class CollectResult:
    root: Path
    kept: int
    attempted: int
    successes: int
    frames: int


def perturbable_dims(env) -> np.ndarray:
    """Boolean mask of the action dimensions DART noise may touch (all but the gripper's)."""
    names = env.features["action"].get("names") or []
    dim = env.features["action"]["shape"][0]
    return np.array([not (i < len(names) and "gripper" in str(names[i]).lower()) for i in range(dim)])


def run_expert_episode(env, expert, seed: int, max_steps: int | None = None,
                       options: dict | None = None, noise: float = 0.0, degrade: float = 0.0) -> Episode:
    from robopolicy.sim.degrade import Degrader, degradation_for

    obs, _ = env.reset(seed=seed, options=options) if options else env.reset(seed=seed)
    expert.reset()
    episode = Episode(seed=seed, success=False, task=env.task)
    limit = max_steps or env.max_steps
    rng = np.random.default_rng([seed, 0xDA27])  # the noise of an episode is a function of its seed
    arm = perturbable_dims(env)
    kind = degradation_for(seed, degrade)
    degrader = Degrader(kind, seed, arm, horizon=limit // 3) if kind else None
    episode.source = f"degraded-{kind}" if kind else ("dart" if noise > 0 else None)
    after = None
    for t in range(limit):
        action = np.asarray(expert.act(obs), dtype=np.float32)
        if degrader is not None:
            action = degrader(action, t)  # recorded as executed: the take itself is bad
        episode.frames.append({**obs, "action": action})
        if noise > 0:
            perturb = arm & (action != 0)
            executed = action + perturb * rng.normal(0.0, noise, size=action.shape).astype(np.float32)
            obs, _, _, _, info = env.step(np.clip(executed, -1.0, 1.0))
        else:
            obs, _, _, _, info = env.step(action)
        if info["is_success"] and after is None:
            episode.success = True
            after = 0
        if after is not None:
            after += 1
            if after >= STEPS_AFTER_SUCCESS:
                break
    return episode


def _worker(env_name: str, env_kwargs: dict, max_steps: int | None, noise: float, degrade: float,
            work: mp.Queue, results: mp.Queue) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    from robopolicy.sim.registry import make_env, make_expert

    try:
        env = make_env(env_name, **env_kwargs)
        expert = make_expert(env_name, env)
    except Exception as err:  # report set-up failures to the parent instead of dying silently
        results.put(Episode(seed=-1, success=False, task="", error=f"{type(err).__name__}: {err}"))
        return
    while True:
        item = work.get()  # (index, seed, reset options), or None to stop
        if item is None:
            break
        index, seed, options = item
        try:
            episode = run_expert_episode(env, expert, seed, max_steps, options, noise=noise, degrade=degrade)
        except Exception:
            episode = Episode(seed=seed, success=False, task="", error=traceback.format_exc(limit=3))
        episode.index = index
        results.put(episode)
    env.close()


def collect(env_name: str, episodes: int, out: str | Path, images: bool = False, image_size: int = 84,
            workers: int = 1, seed: int = 0, keep_failed: bool = False, max_steps: int | None = None,
            video_codec: str = "av1", overwrite: bool = False, progress: bool = True,
            max_attempts: int | None = None, every_instruction: bool = False, noise: float = 0.0,
            resume: bool = False, degrade: float = 0.0) -> CollectResult:
    """Collect `episodes` episodes from seeds seed, seed+1, ... into a new dataset at `out`
    (with `every_instruction`, each seed once per instruction of the env). `resume` continues a
    collection into `out` that was killed, after its last saved episode, with the same seeds."""
    from robopolicy.data.writer import DatasetWriter
    from robopolicy.sim.registry import make_env, require_expert

    require_expert(env_name)  # unknown names and envs without an expert fail here, before any process starts
    if episodes < 1:
        raise RobopolicyError(f"--episodes must be >= 1, got {episodes}")
    if not 0.0 <= noise < 1.0:
        raise RobopolicyError(f"--noise is a standard deviation in action units, in [0, 1); got {noise}")
    if not 0.0 <= degrade <= 1.0:
        raise RobopolicyError(f"--degrade is the fraction of episodes to degrade, in [0, 1]; got {degrade}")
    env_kwargs = {"images": images, "image_size": image_size}
    probe = make_env(env_name, **env_kwargs)
    features, fps = probe.features, int(probe.metadata.get("render_fps", 20))
    robot_type = getattr(probe, "robot_type", "panda")
    instructions = list(getattr(probe, "tasks", None) or []) if every_instruction else []
    probe.close()
    if every_instruction and len(instructions) < 2:
        raise RobopolicyError(f"every_instruction needs an env with several instructions (env.tasks); "
                              f"{env_name} has {len(instructions)}")

    def work_item(index: int) -> tuple[int, int, dict | None]:
        """Attempt `index` -> (index, seed, reset options): seeds in order, each with every instruction."""
        if not instructions:
            return index, seed + index, None
        layout, which = divmod(index, len(instructions))
        return index, seed + layout, {"instruction": instructions[which]}

    max_attempts = max_attempts or max(3 * episodes, episodes + 10)
    # durable: each kept episode is on disk (and journaled) before the next is written, so a kill
    # loses at most the episode in progress; `resume` continues such a folder with the same seeds
    writer = DatasetWriter(out, fps=fps, features=features, robot_type=robot_type, video_codec=video_codec,
                           overwrite=overwrite, durable=True, resume=resume)
    kept = len(writer.episodes)
    next_to_write = writer.resumed_extras[-1]["attempt"] + 1 if writer.resumed_extras else 0
    if kept:
        print(f"resuming {out}: {kept} episodes were saved; continuing from attempt {next_to_write}", flush=True)

    ctx = mp.get_context("spawn")
    work_queue: mp.Queue = ctx.Queue()
    result_queue: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(env_name, env_kwargs, max_steps, noise, degrade, work_queue, result_queue), daemon=True)
             for _ in range(max(1, workers))]
    for p in procs:
        p.start()
    next_index = next_to_write
    in_flight = 0
    for _ in range(2 * len(procs)):
        work_queue.put(work_item(next_index))
        next_index += 1
        in_flight += 1

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, initial=kept, desc=f"collect {env_name}", unit="episode", dynamic_ncols=True)
    finished: dict[int, Episode] = {}
    attempted = successes = frames = 0
    try:
        with writer:
            while kept < episodes:
                if in_flight == 0:
                    raise EnvError(f"{env_name}: only {kept} of {episodes} episodes succeeded in {attempted} attempts"
                                   f" (pass --keep-failed to keep failed ones)")
                episode = _next_result(result_queue, procs)
                if episode.index < 0:
                    raise EnvError(f"collect worker could not start {env_name}: {episode.error}")
                in_flight -= 1
                finished[episode.index] = episode
                # write in seed order so the dataset does not depend on worker timing
                while next_to_write in finished and kept < episodes:
                    ep = finished.pop(next_to_write)
                    next_to_write += 1
                    attempted += 1
                    successes += ep.success
                    if ep.error is not None:
                        raise EnvError(f"{env_name} seed {ep.seed} crashed: {ep.error.strip().splitlines()[-1]}")
                    if ep.success or keep_failed:
                        for frame in ep.frames:
                            writer.add_frame(frame, task=ep.task)
                        writer.journal_extra = {"attempt": ep.index, "seed": ep.seed}
                        writer.save_episode(source=ep.source)
                        kept += 1
                        frames += len(ep.frames)
                        if bar is not None:
                            bar.update(1)
                            bar.set_postfix(success=f"{successes}/{attempted}")
                while in_flight < 2 * len(procs) and next_index < max_attempts and \
                        (next_index - next_to_write) < episodes - kept + 2 * len(procs):
                    work_queue.put(work_item(next_index))
                    next_index += 1
                    in_flight += 1
    finally:
        if bar is not None:
            bar.close()
        for _ in procs:
            work_queue.put(None)
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.terminate()
    return CollectResult(root=Path(out), kept=kept, attempted=attempted, successes=successes, frames=frames)


def _next_result(results: mp.Queue, procs: list) -> Episode:
    import queue

    while True:
        try:
            return results.get(timeout=1.0)
        except queue.Empty:
            if not any(p.is_alive() for p in procs):
                raise EnvError("every collect worker exited unexpectedly (simulator crash?)") from None
