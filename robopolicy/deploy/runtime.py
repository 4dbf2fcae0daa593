"""Inference that never stalls the control loop: chunk execution strategies for deployment.

The loop calls `observe(step, obs)` then `action(step)` once per tick. Strategies:

  sync      receding horizon, inference when the queue runs dry while the loop waits for it:
            simplest, but the tick that runs inference is late by the inference time (the
            baseline the others are measured against). The inference runs in the background
            thread like the others' and the loop waits at most `inference_budget_s` for it, so
            the watchdog stops the robot on an overrun in this strategy too.
  async     receding horizon with inference in a background thread, started early enough (from
            the measured latency) that the next chunk arrives before the queue runs dry. When it
            arrives, the actions whose time already passed during inference are skipped.
  rtc       real-time chunking for diffusion / flow heads: like async, but the actions that will
            be executed while the next chunk is computed are passed to the head as a `prefix`,
            so the new chunk is generated to continue them — no jump at the chunk boundary.
  ensemble  inference as often as it can run, each chunk stamped with the step it was made for;
            the action for a step is the exp(-decay * i)-weighted mean of every chunk covering it
            (ACT's temporal ensembling, made asynchronous).

The runtime decides where and when inference runs (`prime` inline before the clock starts, then a
background thread, which the loop waits for in `sync`) and whether the committed prefix goes to the
head (`rtc`); how chunks become actions is `ActionQueue` / `ChunkEnsemble`, the classes offline
evaluation uses too, so evaluation and deployment execute chunks the same way.

Background inference shares the process with the loop, so two things keep it from slowing the
loop (or the loop from starving it): torch's intra-op threads are capped at the cores minus one
(`inference_threads`), leaving a core to the loop and the robot driver, and the interpreter's
thread switch interval is shortened while the loop runs, so neither thread waits a full 5 ms
for the GIL between the hundreds of small operators of one inference. On a 2-core CPU this took
a 20 Hz loop from 14 missed actions in 8 s (inference slowed 4x by contention) to none.

`policy` is anything with the Policy inference interface (`predict_chunk`, `config`, `spec`,
`chunk_start`, `observation_keys`, `supports_prefix`): a local `Policy` or a `PolicyClient`
talking to a server.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np
import torch

from robopolicy.deploy.names import STRATEGIES
from robopolicy.errors import ConfigError
from robopolicy.policy.execution import ActionQueue, ChunkEnsemble, ObservationHistory

STOP_WAIT_S = 120.0  # longest `stop` waits for a running inference to finish
SWITCH_INTERVAL_S = 0.0005  # GIL hand-over while background inference runs (Python's default: 0.005)


def default_inference_threads() -> int:
    """All usable cores but one: that one stays with the control loop and the robot driver."""
    return max(1, len(os.sched_getaffinity(0)) - 1) if hasattr(os, "sched_getaffinity") else max(1, (os.cpu_count() or 2) - 1)


@dataclass
class RuntimeStats:
    inferences: int = 0
    latencies_s: list = field(default_factory=list)
    skipped_stale: int = 0  # actions dropped because their time passed during inference
    errors: list = field(default_factory=list)


class InferenceRuntime:
    def __init__(self, policy, strategy: str = "async", n_action_steps: int | None = None,
                 inference_steps: int | None = None, hz: float = 20.0, ensemble_decay: float = 0.01,
                 seed: int = 0, latency_margin_steps: int = 1, inference_threads: int | None = None,
                 inference_budget_s: float | None = None):
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
        if strategy == "rtc" and not policy.supports_prefix:
            what = ("a composition of policies" if len(getattr(policy, "policies", ())) > 1
                    else f"its {policy.config.head} head predicts each chunk in one pass")
            raise ConfigError(f"--strategy rtc needs a policy that continues committed actions (one diffusion or"
                              f" flow policy); this one cannot: {what}")
        self.policy = policy
        self.strategy = strategy
        self.chunk_len = policy.config.horizon - policy.chunk_start
        self.n_action_steps = n_action_steps or policy.config.n_action_steps
        self.inference_steps = inference_steps
        self.period = 1.0 / hz
        self.margin = latency_margin_steps
        self.inference_threads = inference_threads or default_inference_threads()
        self.inference_budget_s = inference_budget_s  # sync: the longest the loop waits for a chunk
        self._saved_threading: tuple[int, float] | None = None
        self.keys = [*policy.observation_keys, "task"]
        self.history = ObservationHistory(policy.config.n_obs_steps)
        self.generator = torch.Generator().manual_seed(seed)
        self.stats = RuntimeStats()
        self._lock = threading.Lock()
        # how chunks become actions: the classes offline evaluation uses (robopolicy.policy.execution)
        self._queue = ActionQueue()
        self._ensemble = ChunkEnsemble(ensemble_decay)
        self._latest: tuple[int, dict] | None = None
        self._thread: threading.Thread | None = None
        self._busy = False
        self._busy_since = 0.0
        self._wake = threading.Event()
        self._finished = threading.Event()  # set whenever the worker ends an inference
        self._stop = threading.Event()
        self._sync_request: int | None = None  # sync: the step the loop is waiting for a chunk for

    # ------------------------------------------------------------------ lifecycle
    def _share_the_cpu(self) -> None:
        """Cap torch's threads and shorten the GIL switch interval (undone by `stop`); from the
        first inference (`prime`) on, so no thread pool larger than the cap is ever started."""
        if self.strategy != "sync" and self._saved_threading is None:
            self._saved_threading = (torch.get_num_threads(), sys.getswitchinterval())
            torch.set_num_threads(self.inference_threads)
            sys.setswitchinterval(SWITCH_INTERVAL_S)

    def start(self) -> None:
        self._share_the_cpu()  # not for sync, whose loop waits instead of competing for the cores
        self._thread = threading.Thread(target=self._worker, daemon=True, name="robopolicy-inference")
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            # an overrunning inference cannot be interrupted; the robot is already held, so wait for it
            # (bounded) rather than let the interpreter exit under a running torch kernel
            self._thread.join(timeout=STOP_WAIT_S)
        if self._saved_threading is not None:
            threads, interval = self._saved_threading
            torch.set_num_threads(threads)
            sys.setswitchinterval(interval)
            self._saved_threading = None

    def busy_for(self) -> float:
        """Seconds the running background inference has taken so far (0 when idle)."""
        return time.monotonic() - self._busy_since if self._busy else 0.0

    @property
    def expected_latency_steps(self) -> int:
        """Control steps an inference may take: the 90th percentile of recent ones, rounded up.

        A percentile rather than the median, so that ordinary jitter does not leave the queue empty.
        """
        if not self.stats.latencies_s:
            return 2
        recent = np.percentile(self.stats.latencies_s[-20:], 90)
        return int(np.ceil(recent / self.period))

    # ------------------------------------------------------------------ loop side
    def prime(self, step: int, observation: Mapping[str, Any]) -> None:
        """First inference, synchronous, before the clock starts: the first tick has an action,
        and one-off costs (allocation, kernel selection, caches) are paid outside the loop — at
        the thread count background inference will run with (a compiled CPU policy makes its
        ONNX Runtime sessions for that count here)."""
        self._share_the_cpu()
        stacked = self.history.push({k: observation[k] for k in self.keys if k in observation})
        self._infer(step, stacked, prefix=None)
        with self._lock:
            self._latest = (step, stacked)

    def observe(self, step: int, observation: Mapping[str, Any]) -> None:
        stacked = self.history.push({k: observation[k] for k in self.keys if k in observation})
        with self._lock:
            self._latest = (step, stacked)
            need = self._needs_inference(step)
            if need and self.strategy == "sync":
                self._sync_request = step  # sync infers only when the loop asks, for the step it asks
                self._finished.clear()  # under the lock: the worker cannot have taken this step yet
        if need and self.strategy == "sync":
            self._wake.set()
            self._finished.wait(self.inference_budget_s)  # past the budget, the watchdog sees busy_for()
        elif need:
            self._wake.set()

    def action(self, step: int) -> np.ndarray | None:
        """The action for `step`, or None if none is ready (a missed action)."""
        with self._lock:
            if self.strategy == "ensemble":
                return self._ensemble.action(step)
            action, stale = self._queue.take(step)
            self.stats.skipped_stale += stale
            return action

    # ------------------------------------------------------------------ scheduling
    def _needs_inference(self, step: int) -> bool:
        if self._busy:
            return False
        if self.strategy == "ensemble":
            return True
        remaining = self._queue.remaining(step)
        if self.strategy == "sync":
            return remaining == 0
        return remaining <= self.expected_latency_steps + self.margin

    def _worker(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=0.05)
            self._wake.clear()
            with self._lock:
                if self.strategy == "sync":
                    if self._sync_request is None:
                        continue
                    self._sync_request = None
                elif self._latest is None or not self._needs_inference(self._latest[0]):
                    continue
                step, stacked = self._latest
                self._busy = True
                self._busy_since = time.monotonic()
                prefix = self._rtc_prefix(step) if self.strategy == "rtc" else None
            try:
                self._infer(step, stacked, prefix)
            except Exception as err:  # surfaced to the loop's watchdog through stats.errors
                self.stats.errors.append(f"{type(err).__name__}: {err}")
            finally:
                with self._lock:
                    self._busy = False
                self._finished.set()

    def _rtc_prefix(self, step: int) -> np.ndarray | None:
        """Actions already queued for the steps this inference is expected to overlap."""
        committed = self._queue.planned(step, step + self.expected_latency_steps + self.margin)
        return np.stack(committed) if committed else None

    def _infer(self, step: int, stacked: dict, prefix: np.ndarray | None) -> None:
        start = time.perf_counter()
        chunk = self.policy.predict_chunk(stacked, steps=self.inference_steps, prefix=prefix, generator=self.generator)
        self.stats.latencies_s.append(time.perf_counter() - start)
        self.stats.inferences += 1
        with self._lock:
            if self.strategy == "ensemble":
                self._ensemble.add(step, chunk)
                return
            keep = self.n_action_steps
            if self.strategy != "sync":  # the first actions will be stale on arrival: keep enough after them
                keep += self.expected_latency_steps + self.margin
            self._queue.plan(step, chunk[:keep])
