"""Many envs stepped a chunk at a time, their policy calls batched: the rollout engine of fine-tuning.

RL is bound by environment steps, and a policy call per env per decision would spend most of its
time in per-call overhead. Here the policy stays in the calling process and makes one batched
forward pass for every env that needs a decision; the envs live in worker processes, each stepping
its share of them in turn, so simulation runs on the other cores while the policy thinks. A decision
is a chunk: each env executes its `n_action_steps` actions (fewer if the episode ends), exactly as
`robopolicy eval` executes chunks, and returns its new observation window (the last `n_obs_steps`
observations, as the policy reads them). One message per worker per decision carries all of it.

With `workers=0` the envs step in the calling process (tests, or a single core).

Several machines: run a `ChunkEnvs` per machine under an existing engine (a Ray actor per machine,
or one process per machine under torch.distributed with the policy weights broadcast after each
update); its interface is plain Python data, so nothing here needs a network protocol of its own.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from dataclasses import dataclass

import numpy as np

from robopolicy.errors import EnvError
from robopolicy.policy.execution import ObservationHistory


@dataclass
class ChunkResult:
    """What one env reports after executing a chunk."""

    window: dict  # the observation window for the next decision (meaningless once `done`)
    reward: float  # 1.0 when the task was achieved during this chunk (sparse success reward)
    env_reward: float  # the env's own reward, summed over the chunk's steps
    success: bool
    done: bool  # success, or the episode's step limit
    steps: int  # env steps executed (<= n_action_steps)
    episode_steps: int  # env steps since reset
    sim_seconds: float  # time inside env.step: steps / sim_seconds is the simulator's own rate


class EnvGroup:
    """Some envs with their observation histories, stepped one after another (inside one worker)."""

    def __init__(self, env_name: str, count: int, n_obs_steps: int, env_kwargs: dict, max_steps: int | None):
        from robopolicy.sim.registry import make_env

        self.envs = [make_env(env_name, **env_kwargs) for _ in range(count)]
        self.histories = [ObservationHistory(n_obs_steps) for _ in range(count)]
        self.limits = [max_steps or env.max_steps for env in self.envs]
        self.steps = [0] * count

    def reset(self, items: list[tuple[int, int]]) -> list[dict]:
        """[(env index, seed)] -> the first observation window of each."""
        out = []
        for i, seed in items:
            obs, _ = self.envs[i].reset(seed=seed)
            self.histories[i].reset()
            self.steps[i] = 0
            out.append(self.histories[i].push({**obs, "task": self.envs[i].task}))
        return out

    def step(self, items: list[tuple[int, np.ndarray]]) -> list[ChunkResult]:
        """[(env index, actions (n, A))] -> what each env reports after executing its actions."""
        out = []
        for i, actions in items:
            env, success, done, executed, window, total = self.envs[i], False, False, 0, None, 0.0
            started = time.perf_counter()
            for action in actions:
                obs, reward, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32))
                executed += 1
                total += float(reward)
                self.steps[i] += 1
                window = self.histories[i].push({**obs, "task": env.task})
                if info.get("is_success"):
                    success = True
                if success or terminated or truncated or self.steps[i] >= self.limits[i]:
                    done = True
                    break
            out.append(ChunkResult(window, float(success), total, success, done, executed, self.steps[i],
                                   time.perf_counter() - started))
        return out

    def close(self) -> None:
        for env in self.envs:
            env.close()


def _serve(conn, env_name: str, count: int, n_obs_steps: int, env_kwargs: dict, max_steps: int | None) -> None:
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        group = EnvGroup(env_name, count, n_obs_steps, env_kwargs, max_steps)
        conn.send(("ready", None))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send(("error", f"{type(err).__name__}: {err}"))
        return
    while True:
        try:
            command, payload = conn.recv()
        except EOFError:  # the parent is gone (killed): nothing more will come
            group.close()
            return
        if command == "close":
            group.close()
            conn.send(("closed", None))
            return
        try:
            conn.send(("ok", getattr(group, command)(payload)))
        except Exception:  # noqa: BLE001
            conn.send(("error", traceback.format_exc(limit=4).strip().splitlines()[-1]))


class ChunkEnvs:
    """`n` envs of `env_name` split over `workers` processes (0: in this process).

    `reset(seeds)` and `step(chunks)` address the envs by index; `step` takes a dict
    {env index: actions (n_action_steps, A)} so that finished envs simply sit out.
    """

    def __init__(self, env_name: str, n: int, n_obs_steps: int, env_kwargs: dict | None = None,
                 max_steps: int | None = None, workers: int = 2):
        if n < 1:
            raise ValueError(f"need at least one env, got {n}")
        self.n = n
        kwargs = dict(env_kwargs or {})
        workers = min(workers, n)
        self.workers = workers
        self.owner = [i % max(workers, 1) for i in range(n)]  # env i lives in worker owner[i]
        self.local_index = [i // max(workers, 1) for i in range(n)]
        if workers == 0:
            self.groups = [EnvGroup(env_name, n, n_obs_steps, kwargs, max_steps)]
            self.conns, self.procs = [], []
            return
        ctx = mp.get_context("spawn")
        self.groups, self.conns, self.procs = [], [], []
        for w in range(workers):
            parent, child = ctx.Pipe()
            count = sum(1 for o in self.owner if o == w)
            proc = ctx.Process(target=_serve, args=(child, env_name, count, n_obs_steps, kwargs, max_steps),
                               daemon=True)
            proc.start()
            self.conns.append(parent)
            self.procs.append(proc)
        for conn in self.conns:
            status, message = conn.recv()
            if status != "ready":
                self.close()
                raise EnvError(f"env {env_name} could not start in a rollout worker: {message}")

    def _call(self, command: str, per_env: dict[int, object]) -> dict[int, object]:
        by_worker: dict[int, list] = {}
        for i, payload in per_env.items():
            by_worker.setdefault(self.owner[i], []).append((i, payload))
        results: dict[int, object] = {}
        if not self.conns:  # in this process: one group holds every env
            items = list(per_env.items())
            return dict(zip(per_env, getattr(self.groups[0], command)(items)))
        for w, items in by_worker.items():  # send to every worker first: they step in parallel
            self.conns[w].send((command, [(self.local_index[i], p) for i, p in items]))
        for w, items in by_worker.items():
            status, out = self.conns[w].recv()
            if status != "ok":
                raise EnvError(f"a rollout worker failed: {out}")
            results.update({i: r for (i, _), r in zip(items, out)})
        return results

    def reset(self, seeds: dict[int, int]) -> dict[int, dict]:
        """{env index: seed} -> {env index: first observation window}."""
        return self._call("reset", seeds)

    def step(self, chunks: dict[int, np.ndarray]) -> dict[int, ChunkResult]:
        """{env index: actions (n_action_steps, A)} -> {env index: ChunkResult}."""
        return self._call("step", chunks)

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("close", None))
                conn.recv()
            except (OSError, EOFError, BrokenPipeError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
        for group in self.groups:
            group.close()
        self.conns, self.procs, self.groups = [], [], []

    def __enter__(self) -> "ChunkEnvs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
