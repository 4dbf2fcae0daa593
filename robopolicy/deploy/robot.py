"""The robot interface: the same shape as LeRobot's `Robot`, so its drivers plug in.

    robot.connect()
    obs = robot.get_observation()    # dict keyed by dataset feature names, plus "timestamp" (monotonic s)
    robot.send_action(action)        # np.ndarray in robot units; returns what was actually sent
    robot.disconnect()

`observation_features` / `action_features` describe the signals in LeRobot's feature format
(dtype, shape, names), which is what a recorder needs to write a dataset and what the control
loop checks against the policy's inputs before it starts.
"""

from __future__ import annotations

import abc
from typing import Any

import numpy as np


class Robot(abc.ABC):
    name: str = "robot"

    @property
    @abc.abstractmethod
    def observation_features(self) -> dict[str, dict]:
        ...

    @property
    @abc.abstractmethod
    def action_features(self) -> dict[str, dict]:
        ...

    @property
    @abc.abstractmethod
    def is_connected(self) -> bool:
        ...

    @abc.abstractmethod
    def connect(self) -> None:
        ...

    @abc.abstractmethod
    def get_observation(self) -> dict[str, Any]:
        ...

    @abc.abstractmethod
    def send_action(self, action: np.ndarray) -> np.ndarray:
        ...

    @abc.abstractmethod
    def disconnect(self) -> None:
        ...

    def hold_action(self) -> np.ndarray:
        """The action that keeps the robot where it is (sent by the watchdog on a safe stop).

        Delta-controlled arms hold with zeros (and the gripper as it is); position-controlled
        arms hold by commanding their current position. Subclasses override to say which.
        """
        return np.zeros(self.action_features["action"]["shape"][0], dtype=np.float32)

    @property
    def task(self) -> str:
        """The instruction given to the policy (language-conditioned policies read it)."""
        return ""

    def __enter__(self) -> "Robot":
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        if self.is_connected:
            self.disconnect()
