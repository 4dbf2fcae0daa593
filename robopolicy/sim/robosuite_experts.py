"""Scripted experts for the robosuite tasks: phase state machines on privileged simulator state.

Each expert moves the gripper through way-points — above the grasp point, down to it, close, lift,
carry the object over its goal, lower, open, back off — with a proportional controller on OSC_POSE
position deltas. An action of 1.0 asks the controller for a 5 cm move, so `error / 0.05` saturates
far from a way-point and slows down near it. If the object is left behind while it should be held
(a missed grasp, a slip), the expert starts over from above it.

While the object is held, way-points are set for the object, not the gripper: the gripper target is
`eef + (goal - object)`, so the grasp offset (a nut held by its handle) and any slip in the fingers
are corrected for.

Only the Square task rotates the gripper. It keeps the gripper pointing straight down (the
controller lets the orientation drift otherwise) and turns it about the vertical: first so that the
fingers close across the nut's handle, then, once the nut is lifted, so that the nut's sides line
up with the square peg and its handle points back at the robot (the arm cannot reach past the peg).
Which way to hold the handle and which way to turn are planned so that the wrist's last joint
stays within its limits. Rotation deltas are world-frame axis-angle increments: +dyaw turns the
gripper counter-clockwise seen from above. Everywhere else the rotation deltas are exactly 0, as in
the LeRobot fixtures.
"""

from __future__ import annotations

import numpy as np

POS_SCALE = 0.05  # metres per unit action (robosuite OSC_POSE output_max)
ROT_GAIN = 4.0  # unit action per radian of orientation error; one unit turns ~0.1 rad per step
OPEN, CLOSE = -1.0, 1.0
UP = np.array([0.0, 0.0, 1.0])


def move(eef: np.ndarray, target: np.ndarray, gain: float = 1.0) -> np.ndarray:
    return np.clip(gain * (target - eef) / POS_SCALE, -1.0, 1.0)


def quat_to_yaw(q_xyzw: np.ndarray) -> float:
    x, y, z, w = q_xyzw
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def quat_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    x, y, z, w = np.asarray(q_xyzw, dtype=np.float64) / np.linalg.norm(q_xyzw)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def rotation_vector(m: np.ndarray) -> np.ndarray:
    """Axis times angle (angle in [0, pi)) of the rotation matrix `m`."""
    angle = np.arccos(np.clip((np.trace(m) - 1) / 2, -1.0, 1.0))
    if angle < 1e-9:
        return np.zeros(3)
    axis = np.array([m[2, 1] - m[1, 2], m[0, 2] - m[2, 0], m[1, 0] - m[0, 1]]) / (2 * np.sin(angle))
    return angle * axis


def pointing_down(yaw: float) -> np.ndarray:
    """Gripper orientation pointing straight down, turned by `yaw` about the vertical (as
    `quat_to_yaw` measures it): yaw 0 is robosuite's home orientation, fingers closing along y."""
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])  # Rz(yaw) @ Rx(pi)


def wrap(angle: float, period: float = 2 * np.pi) -> float:
    """`angle` shifted by a multiple of `period` into [-period/2, period/2)."""
    return (angle + period / 2) % period - period / 2


class PickPlaceExpert:
    """above -> descend -> grasp -> lift -> turn -> carry -> lower -> release, for one object and one
    goal (`turn` passes straight on unless the task turns the gripper).

    Subclasses give the geometry: `object_position` (the held object's reference point),
    `grasp_point` (where the gripper closes), `place_point` (where the object's reference point
    goes; None for lift-only tasks) and, if the gripper must turn, `target_yaw`.
    """

    approach_height = 0.08  # hover this high above the grasp point, and carry this high over the goal
    lift_height = 0.15
    grasp_steps = 8
    release_steps = 8
    tolerance = 0.008  # how close the gripper must get to a way-point
    place_tolerance = 0.008  # how close (horizontally) the object must be over its goal before lowering
    place_clearance = 0.01  # release the object this high above its place point
    orientation_tolerance = 0.05  # rad
    drop_distance = 0.03  # a grasp point this far from the closed gripper is not held any more

    def __init__(self, env):
        self.env = env
        self.sim = env.raw.sim
        self.reset()

    def reset(self) -> None:
        self.timer = 0
        self.lift_from = np.zeros(3)
        self.yaw = None  # the gripper's yaw, unwrapped: counts whole turns
        self._start_attempt()

    def _start_attempt(self) -> None:
        """Begin (again) from above the object; subclasses drop per-attempt plans here."""
        self.phase = "above"

    # task-specific geometry ---------------------------------------------------------------
    def object_position(self) -> np.ndarray:
        raise NotImplementedError

    def grasp_point(self) -> np.ndarray:
        """Where the gripper site closes; the object's reference point unless a subclass knows better."""
        return self.object_position()

    def place_point(self) -> np.ndarray | None:
        """Where the object's reference point should be released; None for lift-only tasks."""
        return None

    def target_yaw(self, obs: dict) -> float | None:
        """Gripper yaw to turn to (unwrapped, like `self.yaw`), pointing straight down; None leaves
        the orientation alone (zero rotation deltas)."""
        return None

    # the state machine --------------------------------------------------------------------
    def act(self, obs: dict) -> np.ndarray:
        eef = np.asarray(obs["observation.state"][:3], dtype=np.float64)
        yaw = quat_to_yaw(obs["observation.state"][3:7])
        self.yaw = yaw if self.yaw is None else self.yaw + wrap(yaw - self.yaw)
        target, gripper = getattr(self, f"_{self.phase}")(eef, obs)
        action = np.zeros(7)
        action[:3] = move(eef, target)
        action[3:6] = np.clip(ROT_GAIN * self._orientation_error(obs), -1.0, 1.0)
        action[6] = gripper
        return action.astype(np.float32)

    def _above(self, eef, obs):
        """Hover over the grasp point, turned for the grasp, so the fingers come straight down."""
        target = self.grasp_point() + self.approach_height * UP
        if np.linalg.norm((target - eef)[:2]) < self.tolerance and abs(target[2] - eef[2]) < 0.02 \
                and self._aligned(obs):
            self.phase = "descend"
        return target, OPEN

    def _descend(self, eef, obs):
        target = self.grasp_point()
        if np.linalg.norm(target - eef) < self.tolerance:
            self.phase, self.timer = "grasp", 0
        return target, OPEN

    def _grasp(self, eef, obs):
        """Hold still while the fingers close (they take a few steps)."""
        self.timer += 1
        if self.timer >= self.grasp_steps:
            self.phase, self.lift_from = "lift", eef.copy()
        return self.grasp_point(), CLOSE

    def _lift(self, eef, obs):
        """Straight up first, so the object clears its neighbours before moving sideways."""
        target = self.lift_from + self.lift_height * UP
        if self._dropped(eef):
            self._start_attempt()
        elif self.place_point() is not None and eef[2] > target[2] - 0.02:
            self.phase = "turn"
        return target, CLOSE

    def _turn(self, eef, obs):
        """Turn the held object to its placing orientation before carrying it: turning it near the
        goal would swing the gripper around the object, out of the arm's reach."""
        if self._dropped(eef):
            self._start_attempt()
        elif self._aligned(obs):
            self.phase = "carry"
        return self.lift_from + self.lift_height * UP, CLOSE

    def _carry(self, eef, obs):
        """Bring the object over its goal without sinking (which could drag it into a wall or peg)."""
        error = self._object_error(self.approach_height)
        target = eef + error
        target[2] = max(target[2], eef[2] - 0.01)
        if self._dropped(eef):
            self._start_attempt()
        elif np.linalg.norm(error[:2]) < self.place_tolerance and self._aligned(obs):
            self.phase = "lower"
        return target, CLOSE

    def _lower(self, eef, obs):
        """Straight down onto the goal, still correcting the object's horizontal position."""
        error = self._object_error(self.place_clearance)
        if self._dropped(eef):
            self._start_attempt()
        elif error[2] > -0.002:
            self.phase, self.timer = "release", 0
        return eef + error, CLOSE

    def _release(self, eef, obs):
        """Open in place, then back off upwards: success needs the gripper away from the object."""
        self.timer += 1
        return eef + (0.0 if self.timer <= self.release_steps else POS_SCALE) * UP, OPEN

    def _object_error(self, height: float) -> np.ndarray:
        """Displacement that takes the held object to `height` above its place point."""
        return self.place_point() + height * UP - self.object_position()

    def _dropped(self, eef: np.ndarray) -> bool:
        """A held object's grasp point moves with the gripper; if it is left behind, the grasp
        missed or slipped."""
        return np.linalg.norm(self.grasp_point() - eef) > self.drop_distance

    def _orientation_error(self, obs: dict) -> np.ndarray:
        """Rotation (world-frame axis-angle, OSC_POSE's rotation-delta convention) towards the target
        orientation. It also undoes tilt. The yaw part is capped at pi/2 so that turns of pi or more
        go the way `target_yaw` means, not the shortest way (which may run the wrist into its limit)."""
        yaw = self.target_yaw(obs)
        if yaw is None:
            return np.zeros(3)
        toward = self.yaw + np.clip(yaw - self.yaw, -np.pi / 2, np.pi / 2)
        return rotation_vector(pointing_down(toward) @ quat_to_matrix(obs["observation.state"][3:7]).T)

    def _aligned(self, obs: dict) -> bool:
        return np.linalg.norm(self._orientation_error(obs)) < self.orientation_tolerance


class LiftExpert(PickPlaceExpert):
    def object_position(self) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.env.raw.cube_body_id])


class StackExpert(PickPlaceExpert):
    place_clearance = 0.005

    def object_position(self) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.env.raw.cubeA_body_id])

    def place_point(self) -> np.ndarray:
        # cubeA's center goes one cube height above cubeB's center
        return np.array(self.sim.data.body_xpos[self.env.raw.cubeB_body_id]) + [0, 0, 0.045]


class PickPlaceCanExpert(PickPlaceExpert):
    """Success: the can's center inside its quarter of the goal bin, below 10 cm over the bin."""

    lift_height = 0.2  # clear the bin walls
    place_clearance = 0.02
    # The hand's underside is 3 cm above the gripper site: grasping at the can's center (4 cm below
    # its lid) would land the hand on the lid.
    grasp_above_center = 0.015
    resting_height = 0.06  # can center above `bin2_pos` when it stands on the bin floor

    def object_position(self) -> np.ndarray:
        raw = self.env.raw
        return np.array(self.sim.data.body_xpos[raw.obj_body_id["Can"]])

    def grasp_point(self) -> np.ndarray:
        return self.object_position() + self.grasp_above_center * UP

    def place_point(self) -> np.ndarray:
        raw = self.env.raw
        return np.array(raw.target_bin_placements[raw.object_to_id["can"]]) + self.resting_height * UP


class NutAssemblySquareExpert(PickPlaceExpert):
    """Grasp the square nut by its handle and drop it over the square peg (peg1).

    Success: nut center within 3 cm of the peg's axis and below 5 cm over the table, i.e. threaded
    on the peg. The peg (3.2 cm wide, 13 cm above the table) fits the nut's hole (4.55 cm wide) with
    under 7 mm to spare per side only when their sides are parallel, so the nut is turned while
    carried and lowered only once centred within `place_tolerance`. The nut must end with its handle
    towards the robot (nut yaw pi): the gripper cannot reach the peg's far side.
    """

    lift_height = 0.17
    place_tolerance = 0.003
    place_clearance = 0.0
    grasp_above_handle = 0.005  # the fingertips reach 1.1 cm below the gripper site: keep them off the table
    # The handle site is 5.4 cm from the nut's center, 1 cm from the ring; a finger (2.1 cm wide)
    # centred there can land on the ring. 6 mm further out it is clear and still on the handle.
    grasp_outward = 0.006
    # Nut center height (above the table) at release: already 3 cm down the peg, whose top is 13 cm up;
    # lower down the hand would hit the peg top. Released, the nut slides down to the table.
    release_height = 0.10
    wrist_margin = 0.3  # rad kept clear of the last joint's limits

    def _start_attempt(self) -> None:
        super()._start_attempt()
        self.plan = None  # (nut yaw - gripper yaw while held, grasp yaw, placing yaw), made when needed

    def _nut_body(self) -> int:
        raw = self.env.raw
        return raw.obj_body_id[raw.nuts[0].name]

    def _nut_yaw(self) -> float:
        quat_wxyz = self.sim.data.body_xquat[self._nut_body()]
        return quat_to_yaw(np.array([*quat_wxyz[1:], quat_wxyz[0]]))

    def object_position(self) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self._nut_body()])

    def grasp_point(self) -> np.ndarray:
        raw = self.env.raw
        handle = raw.sim.model.site_name2id(raw.nuts[0].important_sites["handle"])
        yaw = self._nut_yaw()
        outward = self.grasp_outward * np.array([np.cos(yaw), np.sin(yaw), 0.0])
        return np.array(self.sim.data.site_xpos[handle]) + outward + self.grasp_above_handle * UP

    def place_point(self) -> np.ndarray:
        raw = self.env.raw
        peg = np.array(self.sim.data.body_xpos[raw.peg1_body_id])
        return np.array([peg[0], peg[1], raw.table_offset[2] + self.release_height])

    def _heading(self, position: np.ndarray) -> float:
        """Direction from the robot's base to `position`, which the base joint turns the arm to."""
        base = self.env.raw.robots[0].base_pos
        return float(np.arctan2(position[1] - base[1], position[0] - base[0]))

    def _wrist_reaches(self, yaw: float, position: np.ndarray, eef: np.ndarray) -> bool:
        """Whether the Panda's last joint stays within its limits (less `wrist_margin`) with the
        gripper at `yaw` over `position`. Pointing down, gripper yaw = base joint - last joint +
        const, and the base joint follows the heading, so predict the last joint from its angle now."""
        joint = self.sim.model.joint_name2id(self.env.raw.robots[0].robot_joints[-1])
        low, high = self.sim.model.jnt_range[joint]
        angle = self.sim.data.qpos[self.sim.model.jnt_qposadr[joint]]
        predicted = angle - (yaw - self.yaw) + self._heading(position) - self._heading(eef)
        return low + self.wrist_margin <= predicted <= high - self.wrist_margin

    def _plan(self, eef: np.ndarray) -> tuple[float, float, float]:
        """How to hold and turn the nut. The fingers close across the handle two ways, pi apart:
        gripper yaw = nut yaw (`flip` 0; pointing the handle back then needs gripper yaw pi) or
        nut yaw - pi (`flip` pi; placing at gripper yaw 0). Each yaw can also be reached a turn
        either way. Of the plans the wrist can follow, take the one with the least turning."""
        def turns(angle: float) -> list[float]:
            nearest = self.yaw + wrap(angle - self.yaw)
            return [nearest - 2 * np.pi, nearest, nearest + 2 * np.pi]

        options = []
        for flip in (0.0, np.pi):
            for grasp_yaw in turns(self._nut_yaw() - flip):
                for place_yaw in turns(np.pi - flip):
                    if self._wrist_reaches(grasp_yaw, self.grasp_point(), eef) \
                            and self._wrist_reaches(place_yaw, self.place_point(), eef):
                        turning = abs(grasp_yaw - self.yaw) + abs(place_yaw - grasp_yaw)
                        options.append((turning, flip, grasp_yaw, place_yaw))
        return min(options)[1:]

    def target_yaw(self, obs: dict) -> float | None:
        """Until lifted: the planned grasp yaw (tracking the nut). Then: the placing yaw, corrected
        for how the nut actually sits in the fingers. Released: leave the orientation alone."""
        if self.phase == "release":
            return None
        if self.plan is None:
            self.plan = self._plan(np.asarray(obs["observation.state"][:3], dtype=np.float64))
        flip, grasp_yaw, place_yaw = self.plan
        if self.phase in ("above", "descend", "grasp", "lift"):
            return grasp_yaw + wrap(self._nut_yaw() - flip - grasp_yaw)
        nut_in_gripper = self._nut_yaw() - self.yaw
        return place_yaw + wrap(np.pi - nut_in_gripper - place_yaw)


EXPERTS = {"Lift": LiftExpert, "Stack": StackExpert, "PickPlaceCan": PickPlaceCanExpert,
           "NutAssemblySquare": NutAssemblySquareExpert}


def expert_for(env) -> PickPlaceExpert:
    """The expert of a `RobosuiteEnv`'s task (the registry's expert entry point for robosuite/*)."""
    return EXPERTS[env.info.robosuite_name](env)
