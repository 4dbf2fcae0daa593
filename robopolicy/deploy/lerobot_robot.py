"""LeRobotRobot: any LeRobot robot driver (SO-100/101, Koch, LeKiwi, ...) behind our `Robot`.

Needs the optional extra: `pip install "robopolicy[lerobot]"`. LeRobot robots speak flat dicts —
observations like {"shoulder_pan.pos": 12.3, ..., "front": HxWx3 uint8} and actions like
{"shoulder_pan.pos": 10.0, ...}. The adapter maps them to dataset feature names:

    observation.state          the motor values, in the order of the robot's action features
    observation.images.<cam>   each camera LeRobot reports
    action                     a vector in the same motor order

so a policy trained on a LeRobot dataset recorded with that robot reads them unchanged. Position-
controlled arms hold by commanding where they are, which is what `hold_action` returns.

Usage:
    robot = LeRobotRobot.from_type("so101_follower", port="/dev/ttyACM0", id="my_arm",
                                   cameras={"front": {"type": "opencv", "index_or_path": 0,
                                                      "width": 640, "height": 480, "fps": 30}})
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from robopolicy.deploy.robot import Robot
from robopolicy.errors import RobopolicyError


class LeRobotRobot(Robot):
    def __init__(self, robot: Any, task: str = ""):
        """Wrap an object following LeRobot's `Robot` interface (constructed but not connected)."""
        self.robot = robot
        self.name = f"lerobot:{getattr(robot, 'name', type(robot).__name__)}"
        self._task = task
        action_ft = robot.action_features
        self.motors = [k for k, v in action_ft.items() if v is float]
        if len(self.motors) != len(action_ft):
            raise RobopolicyError(f"{self.name}: only scalar (float) action features are supported, got {action_ft}")
        obs_ft = robot.observation_features
        missing = [m for m in self.motors if m not in obs_ft]
        if missing:
            raise RobopolicyError(f"{self.name}: observations lack the motor readings {missing}")
        self.cameras = [k for k, v in obs_ft.items() if isinstance(v, tuple) and len(v) == 3]
        self._last_state: np.ndarray | None = None

    @classmethod
    def from_type(cls, robot_type: str, task: str = "", **config: Any) -> "LeRobotRobot":
        """Build LeRobot's driver by its registered type name (e.g. "so101_follower") and config fields."""
        try:
            from lerobot.robots import RobotConfig, make_robot_from_config
        except ImportError as err:
            raise RobopolicyError("LeRobot robot drivers need the optional extra: pip install 'robopolicy[lerobot]'"
                                  f" ({err})") from None
        config = dict(config)
        cameras = config.pop("cameras", None)
        try:
            config_cls = RobotConfig.get_choice_class(robot_type)
        except Exception:
            raise RobopolicyError(f"unknown LeRobot robot type {robot_type!r};"
                                  f" known: {sorted(RobotConfig.get_known_choices())}") from None
        if cameras:
            from lerobot.cameras import CameraConfig

            config["cameras"] = {name: CameraConfig.get_choice_class(c.pop("type", "opencv"))(**c)
                                 for name, c in cameras.items()}
        return cls(make_robot_from_config(config_cls(**config)), task=task)

    # ------------------------------------------------------------------ features
    @property
    def observation_features(self) -> dict[str, dict]:
        out = {"observation.state": {"dtype": "float32", "shape": [len(self.motors)], "names": list(self.motors)}}
        for cam in self.cameras:
            h, w, c = self.robot.observation_features[cam]
            out[f"observation.images.{cam}"] = {"dtype": "video", "shape": [h, w, c],
                                               "names": ["height", "width", "channels"]}
        return out

    @property
    def action_features(self) -> dict[str, dict]:
        return {"action": {"dtype": "float32", "shape": [len(self.motors)], "names": list(self.motors)}}

    @property
    def is_connected(self) -> bool:
        return bool(self.robot.is_connected)

    @property
    def task(self) -> str:
        return self._task

    # ------------------------------------------------------------------ Robot API
    def connect(self) -> None:
        self.robot.connect()

    def get_observation(self) -> dict[str, Any]:
        raw = self.robot.get_observation()
        stamp = time.monotonic()
        state = np.array([raw[m] for m in self.motors], dtype=np.float32)
        self._last_state = state
        obs: dict[str, Any] = {"observation.state": state, "timestamp": stamp, "task": self._task}
        for cam in self.cameras:
            obs[f"observation.images.{cam}"] = np.asarray(raw[cam], dtype=np.uint8)
        return obs

    def send_action(self, action: np.ndarray) -> np.ndarray:
        action = np.asarray(action, dtype=np.float32).reshape(-1)
        if action.shape != (len(self.motors),):
            raise RobopolicyError(f"{self.name}: action has {action.size} values, the robot has {len(self.motors)} motors")
        sent = self.robot.send_action({m: float(v) for m, v in zip(self.motors, action)})
        return np.array([sent[m] for m in self.motors], dtype=np.float32)

    def hold_action(self) -> np.ndarray:
        """Position-controlled: hold = command the last measured position."""
        if self._last_state is None:
            self.get_observation()
        return self._last_state.copy()

    def disconnect(self) -> None:
        self.robot.disconnect()
