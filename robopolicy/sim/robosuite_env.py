"""robosuite 1.5 tasks as gymnasium envs speaking LeRobot feature names.

Panda arm, robosuite's default controller (OSC_POSE: deltas [dx, dy, dz, droll, dpitch, dyaw] in
[-1, 1] plus a gripper command, +1 closes), 20 Hz. Observations:

    observation.state              eef position (3), eef quaternion xyzw (4), gripper joints (2)
    observation.environment_state  robosuite's "object-state" (object poses, gripper-to-object)
    observation.images.agentview   front camera, uint8 (H, W, 3), upright
    observation.images.wrist       eye-in-hand camera, uint8 (H, W, 3), upright

robosuite renders with OpenGL's origin at the bottom, so images are flipped to be upright — the
same orientation as the LeRobot fixtures. Offscreen frames keep robosuite's 4x multi-sample
anti-aliasing (its render context exists before any setting of ours could change it), so they are
robosuite's own frames.
`reset(seed=s)` reseeds robosuite's generator, so an episode's initial state is a function of s.

Camera observations are rendered with exact shortcuts (robopolicy/sim/robosuite_render.py): the
wrist camera, whose view stays on the table, skips the floor's reflection pass and the geoms it
cannot show.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402

from robopolicy.errors import EnvError  # noqa: E402
from robopolicy.sim.headless import prepare_offscreen_rendering  # noqa: E402
from robopolicy.sim.robosuite_render import install_render_shortcuts  # noqa: E402

CAMERAS = {"agentview": "observation.images.agentview", "robot0_eye_in_hand": "observation.images.wrist"}
STATE_NAMES = ["eef_x", "eef_y", "eef_z", "eef_qx", "eef_qy", "eef_qz", "eef_qw", "gripper_q0", "gripper_q1"]
ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]


@dataclass(frozen=True)
class TaskInfo:
    robosuite_name: str
    instruction: str
    max_steps: int
    extra_kwargs: tuple = ()


TASKS = {
    "Lift": TaskInfo("Lift", "lift the red cube", 200),
    "Stack": TaskInfo("Stack", "stack the red cube on the green cube", 300),
    "PickPlaceCan": TaskInfo("PickPlaceCan", "put the can in its bin", 400),
    "NutAssemblySquare": TaskInfo("NutAssemblySquare", "fit the square nut onto the square peg", 400),
}


def _errors_only(record) -> bool:
    import logging

    return record.levelno >= logging.ERROR


def _quiet_robosuite() -> None:
    """Keep robosuite's start-up notices (no private macro file, optional robot models, controller
    config paths) off the terminal, where they would bury our own messages. robosuite sets its
    logger's level itself when first imported, so a filter on the logger, added before the import,
    is what holds; errors still get through."""
    import logging

    for name in ("robosuite", "robosuite_logs"):
        logger = logging.getLogger(name)
        if _errors_only not in logger.filters:
            logger.addFilter(_errors_only)


class RobosuiteEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, task: str = "Lift", images: bool = False, image_size: int = 84,
                 cameras: tuple[str, ...] = tuple(CAMERAS), max_steps: int | None = None,
                 render_size: int | None = None, reward_shaping: bool = False):
        """`reward_shaping`: robosuite's dense staged reward (reach, grasp, lift, ...) scaled to at most
        1 per step, instead of its sparse one; success is the same either way (RL fine-tuning reads it)."""
        if task not in TASKS:
            raise EnvError(f"unknown robosuite task {task!r}; available: {sorted(TASKS)}")
        unknown = [c for c in cameras if c not in CAMERAS]
        if unknown:
            raise EnvError(f"unknown camera(s) {unknown}; available: {sorted(CAMERAS)}")
        _quiet_robosuite()
        try:
            import robosuite
            from robosuite.controllers import load_composite_controller_config
        except ImportError as err:
            raise EnvError(f"robosuite/{task} needs robosuite, which is not installed ({err}): "
                           f"pip install -e '.[sim]'") from None

        self.info = TASKS[task]
        self.task = self.info.instruction
        self.images = images
        self.image_size = image_size
        self.cameras = list(cameras) if images else []
        self.max_steps = max_steps or self.info.max_steps
        self.render_size = render_size
        self.render_mode = "rgb_array"
        if images or render_size is not None:
            prepare_offscreen_rendering()
        self.raw = robosuite.make(
            self.info.robosuite_name, robots="Panda",
            controller_configs=load_composite_controller_config(robot="Panda"),
            has_renderer=False, has_offscreen_renderer=images or render_size is not None,
            use_camera_obs=images, camera_names=self.cameras or "agentview",
            camera_heights=image_size, camera_widths=image_size,
            control_freq=20, horizon=self.max_steps, ignore_done=True, reward_shaping=reward_shaping,
            hard_reset=False, seed=0,
        )
        self._raw_obs = self.raw.reset()
        env_dim = len(self._raw_obs["object-state"])
        self.features = {
            "observation.state": {"dtype": "float32", "shape": [9], "names": STATE_NAMES},
            "observation.environment_state": {"dtype": "float32", "shape": [env_dim], "names": None},
        }
        for cam in self.cameras:
            self.features[CAMERAS[cam]] = {"dtype": "video", "shape": [image_size, image_size, 3],
                                           "names": ["height", "width", "channels"]}
        self.features["action"] = {"dtype": "float32", "shape": [7], "names": ACTION_NAMES}
        spaces = {"observation.state": gym.spaces.Box(-np.inf, np.inf, (9,), np.float32),
                  "observation.environment_state": gym.spaces.Box(-np.inf, np.inf, (env_dim,), np.float32)}
        for cam in self.cameras:
            spaces[CAMERAS[cam]] = gym.spaces.Box(0, 255, (image_size, image_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (7,), np.float32)
        self.steps = 0
        self._configure_offscreen_rendering()

    # ------------------------------------------------------------------ gym API
    def reset(self, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._reseed(seed)
        self._raw_obs = self.raw.reset()
        self._configure_offscreen_rendering()
        self.steps = 0
        return self._observation(), {"is_success": False}

    def step(self, action):
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (7,):
            raise EnvError(f"robosuite action must have 7 values, got {action.shape}")
        if not np.isfinite(action).all():
            raise EnvError(f"action contains NaN or inf: {action.tolist()}")
        self._raw_obs, reward, _, _ = self.raw.step(np.clip(action, -1.0, 1.0))
        self.steps += 1
        success = bool(self.raw._check_success())
        truncated = self.steps >= self.max_steps
        return self._observation(), float(reward), success, truncated, {"is_success": success}

    def render(self):
        size = self.render_size or self.image_size
        frame = self.raw.sim.render(camera_name="agentview", width=size, height=size)
        return np.ascontiguousarray(frame[::-1])

    def close(self):
        self.raw.close()

    # ------------------------------------------------------------------ internals
    def _observation(self) -> dict:
        o = self._raw_obs
        obs = {
            "observation.state": np.concatenate([o["robot0_eef_pos"], o["robot0_eef_quat"],
                                                 o["robot0_gripper_qpos"]]).astype(np.float32),
            "observation.environment_state": np.asarray(o["object-state"], dtype=np.float32),
        }
        for cam in self.cameras:
            obs[CAMERAS[cam]] = np.ascontiguousarray(o[f"{cam}_image"][::-1])
        return obs

    def _reseed(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.raw.rng = rng
        sampler = getattr(self.raw, "placement_initializer", None)
        stack = [sampler] if sampler is not None else []
        while stack:
            s = stack.pop()
            s.rng = rng
            stack.extend(getattr(s, "samplers", {}).values())

    def _configure_offscreen_rendering(self) -> None:
        """Exact render shortcuts for the cameras (module docstring)."""
        if self.cameras and self.skip_hidden_reflections:
            self._install_render_shortcuts()

    # ------------------------------------------------------------------ render shortcuts
    skip_hidden_reflections = True  # class-level switches: off renders every camera as robosuite does
    cull_outside_view = True  # with it: a camera that sees no floor draws only what it can show

    def _install_render_shortcuts(self) -> None:
        """Exact, cheaper offscreen renders (robopolicy/sim/robosuite_render.py)."""
        install_render_shortcuts(self.raw.sim, cull=self.cull_outside_view)
