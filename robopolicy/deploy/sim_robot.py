"""SimRobot: any registered simulation env behind the `Robot` interface.

The simulation advances one control step per `send_action`, so the control loop's clock paces it:
run at 20 Hz and the simulated robot moves in real time, exactly as a real arm would be driven.
This makes the whole deployment path — loop, async inference, safety, watchdog, recording —
runnable and testable on a laptop.

`SimFaults` injects the failures a real robot produces, so the safety machinery can be exercised:
observations that stop updating, a driver that raises, a step that blocks.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from robopolicy.deploy.robot import Robot
from robopolicy.errors import RobopolicyError


class RobotDriverError(RobopolicyError):
    """The robot driver failed (raised by drivers; the watchdog stops the robot on it)."""


@dataclass
class SimFaults:
    """Failures to inject, counted in control steps (actions sent) since connect."""

    stale_observation_after: int | None = None  # observations freeze (same timestamp) from this step
    raise_on_step: int | None = None  # send_action raises RobotDriverError at this step
    block_on_step: int | None = None  # send_action sleeps `block_seconds` at this step
    block_seconds: float = 0.5
    log: list = field(default_factory=list)


class SimRobot(Robot):
    def __init__(self, env_name: str, seed: int = 0, env_kwargs: dict | None = None, faults: SimFaults | None = None,
                 render: bool = False):
        self.env_name = env_name
        self.name = f"sim:{env_name}"
        self.seed = seed
        self.env_kwargs = dict(env_kwargs or {})
        if render:
            self.env_kwargs.setdefault("render_size", 256)
        self.faults = faults or SimFaults()
        self.render_frames = render
        self.frames: list[np.ndarray] = []
        self.env = None
        self._obs: dict[str, Any] | None = None
        self._obs_time = 0.0
        self.steps = 0
        self.success = False
        self.done = False

    # ------------------------------------------------------------------ features
    @property
    def observation_features(self) -> dict[str, dict]:
        self._require_env()
        return {k: v for k, v in self.env.features.items() if k != "action"}

    @property
    def action_features(self) -> dict[str, dict]:
        self._require_env()
        return {"action": self.env.features["action"]}

    @property
    def is_connected(self) -> bool:
        return self.env is not None

    @property
    def task(self) -> str:
        return self.env.task if self.env is not None else ""

    # ------------------------------------------------------------------ Robot API
    def connect(self) -> None:
        from robopolicy.sim.registry import make_env

        if self.env is None:
            self.env = make_env(self.env_name, **self.env_kwargs)
        self._obs, _ = self.env.reset(seed=self.seed)
        self._obs_time = time.monotonic()
        self.steps = 0
        self.success = False
        self.done = False
        self.frames = [self.env.render()] if self.render_frames else []

    def get_observation(self) -> dict[str, Any]:
        self._require_env()
        stale = self.faults.stale_observation_after is not None and self.steps >= self.faults.stale_observation_after
        if not stale:
            self._obs_time = time.monotonic()
        return {**self._obs, "timestamp": self._obs_time, "task": self.env.task}

    def send_action(self, action: np.ndarray) -> np.ndarray:
        self._require_env()
        f = self.faults
        if f.raise_on_step is not None and self.steps == f.raise_on_step:
            f.log.append(("raise", self.steps))
            raise RobotDriverError(f"simulated driver fault at step {self.steps}")
        if f.block_on_step is not None and self.steps == f.block_on_step:
            f.log.append(("block", self.steps))
            time.sleep(f.block_seconds)
        action = np.asarray(action, dtype=np.float32)
        if not self.done:
            self._obs, _, terminated, truncated, info = self.env.step(action)
            self.success = self.success or bool(info.get("is_success"))
            self.done = bool(terminated or truncated)
            if self.render_frames:
                self.frames.append(self.env.render())
        self.steps += 1
        return action

    def disconnect(self) -> None:
        if self.env is not None:
            self.env.close()
            self.env = None

    def _require_env(self) -> None:
        if self.env is None:
            raise RobotDriverError(f"{self.name} is not connected")
