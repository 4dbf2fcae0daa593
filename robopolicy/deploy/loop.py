"""The fixed-rate control loop, with its watchdog.

Timing: deadlines are computed from the start time (t0 + k * period) on the monotonic clock, so
errors never accumulate into drift. The loop sleeps until ~1 ms before a deadline and spins the
rest, which keeps the period error well under a millisecond on an idle core. Objects that exist
when the clock starts are frozen out of the garbage collector (`gc.freeze`), so a full collection
in the middle of a tick scans only what the loop itself allocates (a full scan of torch's and the
simulator's objects takes milliseconds). A tick that starts
more than a full period late is counted as a missed deadline and the schedule skips ahead rather
than bursting to catch up (a robot must not receive a burst of stale commands).

Each tick: read the observation -> watchdog checks -> hand it to the inference runtime -> take
the action for this step -> safety filter -> send -> record. A tick without a planned action
sends the robot's hold command instead (counted in `holds` and `missed_actions`), never the
previous action again: for a delta controller a repeated action is continued motion. The hold
goes out as the robot defines it, without the safety filter's clipping (bounds learned from the
data could turn "stay here" into a move), but only if finite. The watchdog performs a safe stop —
send the robot's hold action, then disconnect — when
observations go stale, inference falls behind its budget or fails, the safety filter refuses an
action, or the driver raises. Ctrl-C and SIGTERM end the loop cleanly the same way.
"""

from __future__ import annotations

import gc
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from robopolicy.errors import SafetyError


@dataclass
class WatchdogConfig:
    max_observation_age_s: float = 0.25  # observations older than this are stale
    max_consecutive_missed: int | None = None  # missed actions in a row before a stop; None = 0.5 s worth
    max_inference_s: float = 2.0  # an inference running longer than this stops the robot


@dataclass
class DeployReport:
    steps: int = 0
    stop_reason: str = "running"
    clean: bool = False  # stopped as asked (steps, duration, episode end, Ctrl-C / SIGTERM), not by a fault
    periods_s: list = field(default_factory=list)
    period_errors_s: list = field(default_factory=list)
    missed_actions: int = 0  # ticks without a planned action: each sent the robot's hold command
    missed_deadlines: int = 0
    success: bool | None = None
    safety: dict = field(default_factory=dict)
    inference: dict = field(default_factory=dict)

    @property
    def holds(self) -> int:
        """Hold commands sent in place of a missing action (one per missed action)."""
        return self.missed_actions

    def summary(self) -> dict:
        errs = np.abs(np.asarray(self.period_errors_s)) * 1000 if self.period_errors_s else np.zeros(1)
        periods = np.asarray(self.periods_s) * 1000 if self.periods_s else np.zeros(1)
        return {"steps": self.steps, "stop_reason": self.stop_reason, "clean_stop": self.clean, "success": self.success,
                "period_ms_mean": float(periods.mean()), "period_error_ms_p50": float(np.percentile(errs, 50)),
                "period_error_ms_p99": float(np.percentile(errs, 99)), "period_error_ms_max": float(errs.max()),
                "missed_actions": self.missed_actions, "holds": self.holds,
                "missed_deadlines": self.missed_deadlines,
                "safety": self.safety, "inference": self.inference}


class _Stop(Exception):
    """Ends the loop; `clean` when it ends as asked rather than because something went wrong."""

    def __init__(self, reason: str, clean: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.clean = clean


class ControlLoop:
    def __init__(self, robot, runtime, hz: float, safety, duration_s: float | None = None, max_steps: int | None = None,
                 watchdog: WatchdogConfig | None = None, recorder=None,
                 on_step: Callable[[int, dict, np.ndarray], None] | None = None, stop_when_done: bool = True):
        if hz <= 0:
            raise ValueError(f"hz must be > 0, got {hz}")
        self.robot = robot
        self.runtime = runtime
        self.hz = hz
        self.period = 1.0 / hz
        self.safety = safety
        self.duration_s = duration_s
        self.max_steps = max_steps
        self.watchdog = watchdog or WatchdogConfig()
        self.recorder = recorder
        self.on_step = on_step
        self.stop_when_done = stop_when_done
        self._stop_requested: str | None = None

    def request_stop(self, reason: str = "stop requested") -> None:
        self._stop_requested = reason

    def run(self) -> DeployReport:
        report = DeployReport()
        previous_handlers = self._install_signal_handlers()
        max_missed = self.watchdog.max_consecutive_missed or max(1, int(0.5 * self.hz))
        previous: np.ndarray | None = None
        missed_in_row = 0
        try:
            if not self.robot.is_connected:
                self.robot.connect()
            obs = self.robot.get_observation()
            self.runtime.prime(0, obs)
            self.runtime.start()
            gc.collect()
            gc.freeze()
            t0 = time.monotonic()
            deadline = t0
            last_tick = None
            step = 0
            while True:
                if self._stop_requested:
                    raise _Stop(self._stop_requested, clean=True)
                if self.max_steps is not None and step >= self.max_steps:
                    raise _Stop("max steps reached", clean=True)
                if self.duration_s is not None and deadline - t0 >= self.duration_s:
                    raise _Stop("duration reached", clean=True)
                _sleep_until(deadline)
                now = time.monotonic()
                report.period_errors_s.append(now - deadline)
                if last_tick is not None:
                    report.periods_s.append(now - last_tick)
                last_tick = now

                obs = self.robot.get_observation()
                age = now - obs.get("timestamp", now)
                if age > self.watchdog.max_observation_age_s:
                    raise _Stop(f"watchdog: observation is {age * 1000:.0f} ms old (limit"
                                f" {self.watchdog.max_observation_age_s * 1000:.0f} ms)")
                self.runtime.observe(step, obs)
                busy = self.runtime.busy_for()
                if busy > self.watchdog.max_inference_s:
                    raise _Stop(f"watchdog: inference has run {busy:.2f} s (budget {self.watchdog.max_inference_s} s)")
                if self.runtime.stats.errors:
                    raise _Stop(f"watchdog: inference failed: {self.runtime.stats.errors[-1]}")
                action = self.runtime.action(step)
                if action is None:
                    report.missed_actions += 1
                    missed_in_row += 1
                    if missed_in_row > max_missed:
                        raise _Stop(f"watchdog: no action from the policy for {missed_in_row} steps"
                                    f" (inference too slow for {self.hz:g} Hz?)")
                    hold = np.asarray(self.robot.hold_action(), dtype=np.float64)
                    if not np.isfinite(hold).all():
                        raise _Stop(f"safety: the robot's hold command {hold.tolist()} is not finite")
                    sent = self.robot.send_action(hold.astype(np.float32))
                else:
                    missed_in_row = 0
                    try:
                        safe = self.safety(action, previous)
                    except SafetyError as err:
                        raise _Stop(f"safety: {err}") from None
                    sent = self.robot.send_action(safe)
                previous = np.asarray(sent, dtype=np.float64)
                if self.recorder is not None:
                    self.recorder.add(obs, np.asarray(sent, dtype=np.float32))
                if self.on_step is not None:
                    self.on_step(step, obs, sent)
                step += 1
                report.steps = step
                if self.stop_when_done and getattr(self.robot, "done", False):
                    raise _Stop("episode finished", clean=True)
                deadline += self.period
                late = time.monotonic() - deadline
                if late > self.period:
                    skipped = int(late // self.period)
                    report.missed_deadlines += skipped
                    deadline += skipped * self.period
        except _Stop as stop:
            report.stop_reason, report.clean = stop.reason, stop.clean
        except KeyboardInterrupt:
            report.stop_reason, report.clean = "interrupted", True
        except Exception as err:  # driver errors and anything else: stop the robot safely, then report
            report.stop_reason = f"error: {type(err).__name__}: {err}"
        finally:
            gc.unfreeze()
            self._safe_stop(report)  # the robot holds first; an inference still running is waited for after
            self.runtime.stop()
            self._restore_signal_handlers(previous_handlers)
        report.success = getattr(self.robot, "success", None)
        report.safety = self.safety.report()
        lat = self.runtime.stats.latencies_s
        report.inference = {"count": self.runtime.stats.inferences, "strategy": self.runtime.strategy,
                            "latency_ms_p50": float(np.percentile(lat, 50) * 1000) if lat else None,
                            "latency_ms_p99": float(np.percentile(lat, 99) * 1000) if lat else None,
                            "skipped_stale": self.runtime.stats.skipped_stale}
        return report

    def _safe_stop(self, report: DeployReport) -> None:
        """Hold position, then disconnect — whatever state the driver is in."""
        try:
            if self.robot.is_connected:
                self.robot.send_action(self.robot.hold_action())
        except Exception as err:
            report.stop_reason += f" (hold command failed: {type(err).__name__})"
        try:
            if self.robot.is_connected:
                self.robot.disconnect()
        except Exception:
            pass
        if self.recorder is not None:
            self.recorder.close()

    def _install_signal_handlers(self):
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            self.request_stop(f"signal {signal.Signals(signum).name}")

        return {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_signal_handlers(previous) -> None:
        if previous:
            for s, h in previous.items():
                signal.signal(s, h)


def _sleep_until(deadline: float, spin_s: float = 0.001) -> None:
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        if remaining > spin_s:
            time.sleep(remaining - spin_s)
        # spin the last millisecond: sleep() wakes up late by up to a scheduler tick
