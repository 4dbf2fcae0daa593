"""Language-conditioned tabletop tasks on MuJoCo: coloured cubes, a bowl and a gantry gripper.

Three 4 cm cubes (red, green, blue) and an open bowl lie at random places on a table; a two-finger
parallel gripper on a Cartesian x/y/z gantry acts on them (scene: envs/tabletop/scene.xml). The
cubes are free bodies; the bowl is fixed for the episode, so it cannot be pushed or knocked over.
Every episode draws one instruction, and only the instruction tells the policy which cube matters
and what to do with it:

    pick   "put the {color} cube in the bowl"
    push   "push the {color} cube to the {left|right}"
    mixed  either kind, chosen per episode

Frames. World coordinates in metres; the table top is the plane z = 0. The `front` camera stands at
the -x edge of the table looking across it, so +x points away from the viewer and +y points to the
viewer's LEFT: "left" means +y and "right" means -y, and a cube pushed to the left moves left in
the `front` image. The `wrist` camera rides on the gripper, looking down between the fingers with
the same left/right (and +x up in its image).

Actions: float32 (4,) in [-1, 1], at 20 Hz: [dx, dy, dz, gripper]. dx..dz move the gantry's
position targets by 2 cm per unit (clipped to the gantry's workspace); the targets accumulate, so a
zero action holds position. gripper sets the target finger opening: -1 fully open (8 cm), +1 closed;
a closed gripper stops on whatever it holds and squeezes it. Out-of-range actions are clipped; a
NaN/inf action or one of the wrong length raises `EnvError`.

Observations (LeRobot feature names):

    observation.state              gripper (tool centre point) x, y, z and finger opening, float32 (4,)
    observation.environment_state  red, green, blue cube positions, bowl position, float32 (12,)
                                   (privileged: for low-dim baselines and the scripted expert)
    observation.images.front       uint8 (H, W, 3), upright, only with images=True
    observation.images.wrist       uint8 (H, W, 3), upright, only with images=True

Success (`info["is_success"]`, which also terminates the episode and gives reward 1; every other step
gives 0, or with `reward_shaping=True` the staged progress below):

    pick  the named cube's centre is within the bowl's inner radius of the bowl's centre and below
          its rim, and the gripper does not hold it (fingers open, or the cube not between them);
    push  the named cube moved >= 8 cm in the instructed direction and still rests on the table,
          and neither other cube moved 3 cm or more.

Shaped reward (`reward_shaping=True`, as robosuite's option of that name), in [0, 0.7] until success,
the best stage reached in the current state:

    pick  reach 0.1 * (1 - tanh(10 d)) for the gripper's distance d to the named cube; holding it 0.35;
          held and lifted, up to 0.5 as it rises to the bowl's rim; held above the rim, up to 0.7 as it
          comes over the bowl (1 - tanh(10 d) of the horizontal distance);
    push  reach as for pick; up to 0.7 in proportion to the distance pushed the instructed way while
          the other cubes stay put.

It is a hint for reinforcement learning (`robopolicy finetune ... env_kwargs.reward_shaping=true`);
success is what evaluation counts.

`reset(seed=s)` draws the instruction and then the layout from one generator seeded with s, so an
episode is a function of its seed; `options={"instruction": text}` replaces the drawn instruction
without changing the layout. Layouts keep a clear lane of 15 cm plus the obstacle's size on both
sides of every cube along y, so any cube can be pushed either way without hitting anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import mujoco  # noqa: E402

from robopolicy.errors import EnvError  # noqa: E402
from robopolicy.sim.headless import prepare_offscreen_rendering  # noqa: E402

SCENE_XML = Path(__file__).resolve().parents[2] / "envs" / "tabletop" / "scene.xml"

CONTROL_HZ = 20
STEP_METRES = 0.02  # target motion per unit action
MAX_OPENING = 0.08  # finger gap when fully open
TCP_LOW = np.array([-0.25, -0.35, 0.018])  # gantry workspace; at the lowest z the fingertips clear the table by 3 mm
TCP_HIGH = np.array([0.25, 0.35, 0.25])
HOME = np.array([0.0, 0.0, 0.2])
SETTLE_SECONDS = 0.1  # physics run at reset so objects rest on the table before the first frame

COLORS = ("red", "green", "blue")
DIRECTIONS = {"left": 1.0, "right": -1.0}  # sign along world y
CUBE_HALF = 0.02
BOWL_INNER_RADIUS = 0.065
BOWL_OUTER_RADIUS = 0.073
BOWL_RIM_HEIGHT = 0.05
TABLE_HALF = np.array([0.35, 0.45])

CUBE_AREA = (np.array([-0.15, -0.22]), np.array([0.15, 0.22]))  # where cube centres are placed
BOWL_AREA = (np.array([-0.12, -0.19]), np.array([0.12, 0.19]))
PUSH_LANE = 0.15  # clear length along y on either side of each cube, beyond the obstacle's own size
LAYOUT_TRIES = 10_000

PUSH_DISTANCE = 0.08
PUSH_OTHERS_TOLERANCE = 0.03
MAX_STEPS = {"pick": 150, "push": 100, "mixed": 150}
CAMERAS = {"front": "observation.images.front", "wrist": "observation.images.wrist"}
ENV_STATE_NAMES = [f"{c}_cube_{a}" for c in COLORS for a in "xyz"] + ["bowl_x", "bowl_y", "bowl_z"]


@dataclass(frozen=True)
class Instruction:
    """An instruction's meaning, so success checks and the expert never parse free text."""

    kind: str  # "pick" or "push"
    color: str
    direction: str | None = None  # "left" or "right" for push

    @property
    def text(self) -> str:
        if self.kind == "pick":
            return f"put the {self.color} cube in the bowl"
        return f"push the {self.color} cube to the {self.direction}"


INSTRUCTIONS = {
    "pick": [Instruction("pick", c) for c in COLORS],
    "push": [Instruction("push", c, d) for c in COLORS for d in DIRECTIONS],
}
_BY_TEXT = {i.text: i for kind in INSTRUCTIONS.values() for i in kind}


def parse_instruction(text: str) -> Instruction:
    """The structured form of an instruction this module can produce."""
    if text not in _BY_TEXT:
        raise EnvError(f"unknown tabletop instruction {text!r}; known: {sorted(_BY_TEXT)}")
    return _BY_TEXT[text]


@dataclass(frozen=True)
class Layout:
    """An episode's initial object placement, drawn from its seed."""

    cubes: np.ndarray  # (3, 2) cube centre xy, in COLORS order
    yaws: np.ndarray  # (3,) cube yaw; a cube looks the same every 90 degrees, so +-45 covers all
    bowl: np.ndarray  # (2,) bowl centre xy


def _layout_is_clear(cubes: np.ndarray, bowl: np.ndarray) -> bool:
    """Objects do not touch, and every cube has a clear lane along y for the gripper and a push."""
    obstacles = [(xy, CUBE_HALF) for xy in cubes] + [(bowl, BOWL_OUTER_RADIUS)]
    for i, cube in enumerate(cubes):
        for j, (xy, half) in enumerate(obstacles):
            if j == i:
                continue
            dx, dy = np.abs(xy - cube)
            # a rotated cube reaches sqrt(2) * CUBE_HALF from its centre; 3 cm leaves room for a finger
            if np.hypot(dx, dy) < np.sqrt(2) * CUBE_HALF + half + 0.03:
                return False
            if dx < CUBE_HALF + half + 0.015 and dy < PUSH_LANE + half:
                return False
    return True


def sample_layout(rng: np.random.Generator) -> Layout:
    """Rejection-sample cube and bowl positions (a few dozen tries on average, microseconds each)."""
    for _ in range(LAYOUT_TRIES):
        cubes = rng.uniform(*CUBE_AREA, size=(len(COLORS), 2))
        bowl = rng.uniform(*BOWL_AREA)
        if _layout_is_clear(cubes, bowl):
            return Layout(cubes, rng.uniform(-np.pi / 4, np.pi / 4, size=len(COLORS)), bowl)
    raise RuntimeError("no clear tabletop layout found; the placement areas are too small")


def _yaw_quaternion(yaw: float) -> np.ndarray:
    return np.array([np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)])


class TabletopEnv(gym.Env):
    """Gymnasium env for the tabletop tasks; see the module docstring for frames and semantics.

    Attributes beyond gymnasium's: `task` (this episode's instruction), `tasks` (every instruction
    this env can draw), `features` (LeRobot feature specs), `max_steps`, `steps` (taken this
    episode) and `target` (the gantry's commanded TCP position, which actions move). The env is
    reset once on construction, so it is usable (and `task` is set) before the first `reset`.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}
    robot_type = "gantry_gripper"

    def __init__(self, task: str = "pick", images: bool = True, image_size: int = 84,
                 max_steps: int | None = None, render_size: int | None = None, reward_shaping: bool = False):
        if task not in MAX_STEPS:
            raise EnvError(f"unknown tabletop task {task!r}; available: {sorted(MAX_STEPS)}")
        for name, value in (("image_size", image_size), ("max_steps", max_steps), ("render_size", render_size)):
            if value is not None and (not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1):
                raise EnvError(f"tabletop {name} must be a positive integer, got {value!r}")
        self.kind = task
        self.reward_shaping = bool(reward_shaping)
        self.images = images
        self.image_size = image_size
        self.render_size = render_size
        self.render_mode = "rgb_array"
        self.max_steps = max_steps or MAX_STEPS[task]
        self.tasks = [i.text for kind in ("pick", "push") if task in (kind, "mixed") for i in INSTRUCTIONS[kind]]

        self.model = mujoco.MjModel.from_xml_path(str(SCENE_XML))
        # multi-sample anti-aliasing roughly doubles CPU rendering time and changes nothing at 84x84
        self.model.vis.quality.offsamples = 0
        self.data = mujoco.MjData(self.model)
        self.substeps = round(1.0 / (CONTROL_HZ * self.model.opt.timestep))
        self._gantry_qpos = [self.model.joint(f"gantry_{a}").qposadr[0] for a in "xyz"]
        self._finger_qpos = [self.model.joint(f"finger_{s}").qposadr[0] for s in ("left", "right")]
        self._cube_body = {c: self.model.body(f"cube_{c}").id for c in COLORS}
        self._bowl_body = self.model.body("bowl").id
        self._bowl_mocap = self.model.body("bowl").mocapid[0]
        self._renderers: dict[int, mujoco.Renderer] = {}

        self.features = self._make_features()
        self.observation_space = gym.spaces.Dict({
            key: gym.spaces.Box(0, 255, spec["shape"], np.uint8) if spec["dtype"] == "video"
            else gym.spaces.Box(-np.inf, np.inf, spec["shape"], np.float32)
            for key, spec in self.features.items() if key != "action"})
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.reset()

    # ------------------------------------------------------------------ gym API
    def reset(self, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.task = self._draw_instruction(options or {})
        self._place(sample_layout(self.np_random))
        mujoco.mj_step(self.model, self.data, nstep=round(SETTLE_SECONDS / self.model.opt.timestep))
        self._start = {c: self.cube_position(c) for c in COLORS}
        self.steps = 0
        return self._observation(), {"is_success": False}

    def step(self, action):
        action = self._validated(action)
        self.target = np.clip(self.target + STEP_METRES * action[:3], TCP_LOW, TCP_HIGH)
        self.data.ctrl[:] = [*self.target, MAX_OPENING * (1.0 - action[3]) / 2.0]
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        self.steps += 1
        success = self.success()
        truncated = self.steps >= self.max_steps
        reward = 1.0 if success else self.shaped_reward() if self.reward_shaping else 0.0
        return self._observation(), reward, success, truncated, {"is_success": success}

    def render(self) -> np.ndarray:
        return self._camera_image("front", self.render_size or self.image_size)

    def close(self) -> None:
        for renderer in self._renderers.values():
            renderer.close()
        self._renderers.clear()

    # ------------------------------------------------------------------ state queries
    def tcp_position(self) -> np.ndarray:
        return self.data.qpos[self._gantry_qpos].copy()

    def finger_opening(self) -> float:
        return float(self.data.qpos[self._finger_qpos].sum())

    def cube_position(self, color: str) -> np.ndarray:
        return self.data.xpos[self._cube_body[color]].copy()

    def bowl_position(self) -> np.ndarray:
        return self.data.xpos[self._bowl_body].copy()

    def success(self, instruction: str | None = None) -> bool:
        """Whether the current state satisfies `instruction` (default: this episode's).

        Any instruction of this module can be checked, which allows relabelling an episode."""
        goal = parse_instruction(self.task if instruction is None else instruction)
        if goal.kind == "pick":
            return self._in_bowl(goal.color) and not self._held(goal.color)
        return self._pushed(goal.color, DIRECTIONS[goal.direction])

    def shaped_reward(self) -> float:
        """The staged progress toward this episode's instruction (module docstring), short of success."""
        goal = parse_instruction(self.task)
        cube = self.cube_position(goal.color)
        reach = 0.1 * (1.0 - np.tanh(10.0 * np.linalg.norm(cube - self.tcp_position())))
        if goal.kind == "push":
            moved = DIRECTIONS[goal.direction] * (cube[1] - self._start[goal.color][1])
            return float(max(reach, 0.7 * np.clip(moved / PUSH_DISTANCE, 0.0, 1.0) * self._others_still(goal.color)))
        if not self._held(goal.color):
            return float(reach)
        rim = self.bowl_position()[2] + BOWL_RIM_HEIGHT + CUBE_HALF
        if cube[2] < rim:
            return float(0.35 + 0.15 * np.clip((cube[2] - CUBE_HALF) / (rim - CUBE_HALF), 0.0, 1.0))
        over = np.linalg.norm(cube[:2] - self.bowl_position()[:2])
        return float(0.5 + 0.2 * (1.0 - np.tanh(10.0 * over)))

    # ------------------------------------------------------------------ success checks
    def _in_bowl(self, color: str) -> bool:
        cube, bowl = self.cube_position(color), self.bowl_position()
        return bool(np.linalg.norm(cube[:2] - bowl[:2]) < BOWL_INNER_RADIUS and cube[2] < bowl[2] + BOWL_RIM_HEIGHT)

    def _held(self, color: str) -> bool:
        """Closed fingers around the cube: a cube dangling in the bowl from the gripper is not placed.

        Fingers opened wider than any grip on a cube (its diagonal) hold nothing."""
        if self.finger_opening() > 2 * np.sqrt(2) * CUBE_HALF + 0.005:
            return False
        return bool(np.all(np.abs(self.cube_position(color) - self.tcp_position()) < 2 * CUBE_HALF))

    def _pushed(self, color: str, sign: float) -> bool:
        cube = self.cube_position(color)
        moved = sign * (cube[1] - self._start[color][1])
        on_table = abs(cube[2] - CUBE_HALF) < 0.01 and bool(np.all(np.abs(cube[:2]) < TABLE_HALF))
        return bool(moved >= PUSH_DISTANCE and on_table and self._others_still(color))

    def _others_still(self, color: str) -> bool:
        """No cube but `color` moved 3 cm or more on the table since the episode began."""
        return all(np.linalg.norm((self.cube_position(c) - self._start[c])[:2]) < PUSH_OTHERS_TOLERANCE
                   for c in COLORS if c != color)

    # ------------------------------------------------------------------ internals
    def _make_features(self) -> dict:
        features = {
            "observation.state": {"dtype": "float32", "shape": [4], "names": ["x", "y", "z", "gripper_opening"]},
            "observation.environment_state": {"dtype": "float32", "shape": [len(ENV_STATE_NAMES)],
                                              "names": ENV_STATE_NAMES},
        }
        if self.images:
            for key in CAMERAS.values():
                features[key] = {"dtype": "video", "shape": [self.image_size, self.image_size, 3],
                                 "names": ["height", "width", "channels"]}
        features["action"] = {"dtype": "float32", "shape": [4], "names": ["dx", "dy", "dz", "gripper"]}
        return features

    def _draw_instruction(self, options: dict) -> str:
        """Always draw from the generator, so a forced instruction leaves the seed's layout unchanged."""
        unknown = sorted(set(options) - {"instruction"})
        if unknown:
            raise EnvError(f"unknown tabletop reset option(s) {unknown}; available: ['instruction']")
        kind = self.kind if self.kind != "mixed" else ("pick", "push")[self.np_random.integers(2)]
        candidates = INSTRUCTIONS[kind]
        drawn = candidates[self.np_random.integers(len(candidates))].text
        forced = options.get("instruction")
        if forced is not None and forced not in self.tasks:
            raise EnvError(f"instruction {forced!r} is not one of tabletop/{self.kind}'s: {self.tasks}")
        return forced or drawn

    def _place(self, layout: Layout) -> None:
        """Reset the simulation with the gripper open at home and the objects at `layout`."""
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._gantry_qpos] = HOME
        self.data.qpos[self._finger_qpos] = MAX_OPENING / 2
        for color, xy, yaw in zip(COLORS, layout.cubes, layout.yaws):
            self.data.joint(f"cube_{color}").qpos = [*xy, CUBE_HALF, *_yaw_quaternion(yaw)]
        self.data.mocap_pos[self._bowl_mocap] = [*layout.bowl, 0.0]
        self.target = HOME.copy()
        self.data.ctrl[:] = [*HOME, MAX_OPENING]
        mujoco.mj_forward(self.model, self.data)

    def _observation(self) -> dict:
        obs = {
            "observation.state": np.array([*self.tcp_position(), self.finger_opening()], dtype=np.float32),
            "observation.environment_state": np.concatenate(
                [*(self.cube_position(c) for c in COLORS), self.bowl_position()]).astype(np.float32),
        }
        if self.images:
            for camera, key in CAMERAS.items():
                obs[key] = self._camera_image(camera, self.image_size)
        return obs

    def _camera_image(self, camera: str, size: int) -> np.ndarray:
        renderer = self._renderer(size)
        renderer.update_scene(self.data, camera=camera)
        return renderer.render()

    def _renderer(self, size: int) -> mujoco.Renderer:
        """One renderer per image size, kept for the env's lifetime: creating one costs a GL context."""
        if size not in self._renderers:
            vis = self.model.vis.global_
            vis.offwidth, vis.offheight = max(vis.offwidth, size), max(vis.offheight, size)
            prepare_offscreen_rendering()
            self._renderers[size] = mujoco.Renderer(self.model, height=size, width=size)
        return self._renderers[size]

    @staticmethod
    def _validated(action) -> np.ndarray:
        try:
            action = np.asarray(action, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as err:
            raise EnvError(f"tabletop action must be 4 numbers [dx, dy, dz, gripper]: {err}") from None
        if action.shape != (4,):
            raise EnvError(f"tabletop action must have 4 values [dx, dy, dz, gripper], got {action.size}")
        if not np.isfinite(action).all():
            raise EnvError(f"action contains NaN or inf: {action.tolist()}")
        return np.clip(action, -1.0, 1.0)
