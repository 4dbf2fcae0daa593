"""robosuite 1.5 tasks as gymnasium envs speaking LeRobot feature names.

Panda arm, robosuite's default controller (OSC_POSE: deltas [dx, dy, dz, droll, dpitch, dyaw] in
[-1, 1] plus a gripper command, +1 closes), 20 Hz. Observations:

    observation.state              eef position (3), eef quaternion xyzw (4), gripper joints (2)
    observation.environment_state  robosuite's "object-state" (object poses, gripper-to-object)
    observation.images.agentview   front camera, uint8 (H, W, 3), upright
    observation.images.wrist       eye-in-hand camera, uint8 (H, W, 3), upright

robosuite renders with OpenGL's origin at the bottom, so images are flipped to be upright — the
same orientation as the LeRobot fixtures. Multi-sample anti-aliasing is switched off: it roughly
doubles camera-observation speed on CPUs and does not change what a policy can see at 84x84.
`reset(seed=s)` reseeds robosuite's generator, so an episode's initial state is a function of s.

Camera observations skip MuJoCo's reflection pass for a camera that cannot see a reflective
surface: robosuite's floor is the only one, and a camera whose whole view lands on the table top
(the wrist camera, almost always) sees none of it. The pass redraws the whole scene mirrored, so
this makes such a render several times cheaper. Such a camera then also skips every geom whose
bounding box lies wholly outside its view frustum or wholly below the table top (which hides all
that is below it from a view that ends on it): MuJoCo sends every geom of the scene to the
rasterizer, which on a CPU (llvmpipe) transforms all of the robot's and the mount's mesh triangles
for a view that shows the gripper's fingers and a patch of table. Without reflections or shadows
(robosuite's scenes have none) such a geom adds no pixel, so both shortcuts leave the pixels
exactly as they were (`bench/bench_camera_step.py` compares every frame of whole episodes with and
without them).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402

from robopolicy.errors import EnvError  # noqa: E402
from robopolicy.sim.headless import prepare_offscreen_rendering  # noqa: E402

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
        """No MSAA; render shortcuts for cameras that cannot see the floor (module docstring)."""
        self.raw.sim.model.vis.quality.offsamples = 0
        if self.cameras and self.skip_hidden_reflections:
            self._install_render_shortcuts()

    # ------------------------------------------------------------------ render shortcuts
    skip_hidden_reflections = True  # class-level switches: off renders every camera as robosuite does
    cull_outside_view = True  # with skip_hidden_reflections: no camera draws the geoms it cannot show

    def _install_render_shortcuts(self) -> None:
        """Wrap the offscreen context's render so each camera gets the reflection pass only when it
        may see the floor, and, when it cannot, only the geoms it may show (module docstring). A camera
        that sees the floor draws every geom: one outside its view may still show in the floor's
        reflection. Envs without a plain table over a reflective floor render as robosuite does."""
        import mujoco

        sim = self.raw.sim
        ctx = getattr(sim, "_render_context_offscreen", None)
        if ctx is None or getattr(ctx, "_robopolicy_wrapped", False):
            return
        table = _table_top(sim)
        if table is None:
            return
        flag = mujoco.mjtRndFlag.mjRND_REFLECTION
        render, cull = ctx.render, self.cull_outside_view

        def render_with_shortcuts(width, height, camera_id=None, segmentation=False):
            hidden = camera_id is not None and camera_id >= 0 and _view_inside_table(sim, camera_id, table)
            ctx.scn.flags[flag] = 0 if hidden else 1
            if not (hidden and cull) or segmentation or width > ctx.con.offWidth or height > ctx.con.offHeight:
                return render(width, height, camera_id=camera_id, segmentation=segmentation)
            # robosuite's render for a fixed camera, with the geoms it cannot show dropped in between
            ctx.cam.type, ctx.cam.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, camera_id
            mujoco.mjv_updateScene(sim.model._model, sim.data._data, ctx.vopt, ctx.pert, ctx.cam,
                                   mujoco.mjtCatBit.mjCAT_ALL, ctx.scn)
            _drop_hidden_geoms(ctx.scn, sim.model._model, width / height, table[4])
            mujoco.mjr_render(mujoco.MjrRect(0, 0, width, height), ctx.scn, ctx.con)

        ctx.render = render_with_shortcuts
        ctx._robopolicy_wrapped = True


_GEOM_FIELDS = ("type", "dataid", "objtype", "objid", "category", "matid", "texcoord", "segid", "size", "pos",
                "mat", "rgba", "emission", "specular", "shininess", "reflectance", "label", "camdist",
                "modelrbound", "transparent")
_MARGIN = 1e-3  # metres: a geom must be this far out to be dropped (the scene's poses are float32)


class _Frustum:
    """A perspective camera's view volume as six inward planes: the one mjr_render draws with, whose
    near-plane half-width follows the viewport's aspect ratio."""

    def __init__(self, cam, aspect: float):
        self.eye, forward, up = np.array(cam.pos), np.array(cam.forward), np.array(cam.up)
        right = np.cross(forward, up)
        near, half = cam.frustum_near, 0.5 * aspect * (cam.frustum_top - cam.frustum_bottom)
        normals = []  # the four side planes pass through the eye
        for ray, edge in ((near * forward + (cam.frustum_center - half) * right, up),
                          (near * forward + (cam.frustum_center + half) * right, up),
                          (near * forward + cam.frustum_bottom * up, right),
                          (near * forward + cam.frustum_top * up, right)):
            n = np.cross(edge, ray)
            n /= np.linalg.norm(n)
            normals.append(n if n @ forward > 0 else -n)
        self.planes = np.array(normals + [forward, -forward])  # then the near and far planes
        self.offsets = np.array([0.0] * 4 + [-near, cam.frustum_far])

    def excludes(self, center: np.ndarray, axes: np.ndarray, size: np.ndarray) -> bool:
        """True when the box (centre, unit axes as columns, half-sizes) lies wholly beyond one plane."""
        reach = np.abs(self.planes @ axes) @ size
        return bool((self.planes @ (center - self.eye) + self.offsets < -reach - _MARGIN).any())


def _drop_hidden_geoms(scn, model, aspect: float, table_top: float) -> None:
    """Remove from `scn` every model geom its camera cannot show, judged by the geom's bounding box
    (MuJoCo's geom_aabb, in the geom's frame); the others keep their order, which decides between
    coincident surfaces. The caller knows every ray of the view ends on the table top at `table_top`,
    so anything below it is behind the opaque table: a geom is dropped when it lies wholly outside
    the view frustum, wholly below the top, or its part above the top lies outside the frustum."""
    import mujoco

    cam = scn.camera[0]
    if cam.orthographic:
        return
    view, plane_type, aabb = _Frustum(cam, aspect), mujoco.mjtGeom.mjGEOM_PLANE, model.geom_aabb
    geoms, keep = scn.geoms, 0
    for i in range(scn.ngeom):
        g = geoms[i]
        if g.objtype == mujoco.mjtObj.mjOBJ_GEOM:
            rot = np.array(g.mat).reshape(3, 3)
            if model.geom_type[g.objid] == plane_type:  # infinite: hidden only when level and below the table
                hidden = g.pos[2] < table_top - _MARGIN and abs(rot[2, 2]) > 1 - 1e-6
            else:
                center, size = np.array(g.pos) + rot @ aabb[g.objid, :3], aabb[g.objid, 3:]
                hidden = _box_hidden(view, center, rot, size, table_top)
            if hidden:
                continue
        if keep != i:
            target = geoms[keep]
            for field in _GEOM_FIELDS:
                setattr(target, field, getattr(g, field))
        keep += 1
    scn.ngeom = keep


def _box_hidden(view: _Frustum, center: np.ndarray, rot: np.ndarray, size: np.ndarray, table_top: float) -> bool:
    """The box is outside the view, wholly below the table top that hides what is below it, or its
    world-aligned bounds cut at the top are outside the view."""
    if view.excludes(center, rot, size):
        return True
    extent = np.abs(rot) @ size  # half-sizes of the box's world-aligned bounds
    low, high = center[2] - extent[2], center[2] + extent[2]
    if high < table_top - _MARGIN:
        return True
    low = max(low, table_top)
    return view.excludes(np.array([center[0], center[1], (low + high) / 2]), np.eye(3),
                         np.array([extent[0], extent[1], (high - low) / 2]))


def _table_top(sim) -> tuple[float, float, float, float, float] | None:
    """(centre x, centre y, half x, half y, top z) of an axis-aligned table box above every
    reflective surface, the floor being the only reflective geom; None when the scene is not that."""
    import mujoco

    m, d = sim.model._model, sim.data._data
    table = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "table_visual")
    if table < 0 or m.geom_type[table] != mujoco.mjtGeom.mjGEOM_BOX:
        return None
    if not np.allclose(d.geom_xmat[table].reshape(3, 3), np.eye(3), atol=1e-9):
        return None
    cx, cy, cz = d.geom_xpos[table]
    hx, hy, hz = m.geom_size[table]
    top = cz + hz
    for g in range(m.ngeom):
        mat = m.geom_matid[g]
        if mat < 0 or m.mat_reflectance[mat] <= 0:
            continue
        if m.geom_type[g] == mujoco.mjtGeom.mjGEOM_BOX or (
                m.geom_type[g] == mujoco.mjtGeom.mjGEOM_PLANE and d.geom_xpos[g][2] >= top):
            return None  # a reflective surface the table does not hide (MuJoCo reflects planes and boxes)
    return float(cx), float(cy), float(hx), float(hy), float(top)


def _view_inside_table(sim, camera_id: int, table: tuple[float, float, float, float, float]) -> bool:
    """True when every ray of the camera's (square) view meets the table top inside its edges, so
    nothing beyond the table — the floor — is in the picture. The four corner rays decide it: the
    view's footprint on the table plane is the quadrilateral they span, and the table top is convex."""
    m, d = sim.model._model, sim.data._data
    cx, cy, hx, hy, top = table
    pos = d.cam_xpos[camera_id]
    if pos[2] <= top:
        return False
    rot = d.cam_xmat[camera_id].reshape(3, 3)
    t = np.tan(np.radians(m.cam_fovy[camera_id]) / 2.0)
    for sx in (-t, t):
        for sy in (-t, t):
            ray = rot @ np.array([sx, sy, -1.0])  # a MuJoCo camera looks along its -z axis
            if ray[2] >= -1e-9:
                return False
            k = (top - pos[2]) / ray[2]
            x, y = pos[0] + k * ray[0], pos[1] + k * ray[1]
            if abs(x - cx) >= hx or abs(y - cy) >= hy:
                return False
    return True
