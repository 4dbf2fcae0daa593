"""Scripted experts for the robosuite tasks: phase state machines on privileged simulator state.

Each expert moves the gripper through way-points — above the object, down to it, close, lift,
carry over the goal, lower, open — with a proportional controller on OSC_POSE position deltas.
An action of 1.0 asks the controller for a 5 cm move, so `GAIN / 0.05 * error` saturates far from a
way-point and slows down near it. Only the Square task rotates the gripper (to align with the nut's
handle); everywhere else the rotation deltas are exactly 0, as in the LeRobot fixtures.
"""

from __future__ import annotations

import numpy as np

POS_SCALE = 0.05  # metres per unit action (robosuite OSC_POSE output_max)
OPEN, CLOSE = -1.0, 1.0


def move(eef: np.ndarray, target: np.ndarray, gain: float = 1.0) -> np.ndarray:
    return np.clip(gain * (target - eef) / POS_SCALE, -1.0, 1.0)


def quat_to_yaw(q_xyzw: np.ndarray) -> float:
    x, y, z, w = q_xyzw
    return float(np.arctan2(2 * (w * z + x * y), 1 - 2 * (y * y + z * z)))


def wrap(angle: float, period: float = 2 * np.pi) -> float:
    return (angle + period / 2) % period - period / 2


class PickPlaceExpert:
    """above -> descend -> grasp -> lift -> carry -> lower -> release, for one object and one goal."""

    approach_height = 0.08
    lift_height = 0.15
    grasp_steps = 8
    release_steps = 8
    tolerance = 0.008

    def __init__(self, env):
        self.env = env
        self.sim = env.raw.sim
        self.reset()

    def reset(self) -> None:
        self.phase = "above"
        self.timer = 0
        self.carry_offset = np.zeros(3)

    # task-specific geometry ---------------------------------------------------------------
    def grasp_point(self) -> np.ndarray:
        raise NotImplementedError

    def place_point(self) -> np.ndarray | None:
        """Where the grasp point should end up; None for lift-only tasks."""
        return None

    def target_yaw(self) -> float | None:
        return None

    # the state machine --------------------------------------------------------------------
    def act(self, obs: dict) -> np.ndarray:
        eef = np.asarray(obs["observation.state"][:3], dtype=np.float64)
        grasp = self.grasp_point()
        action = np.zeros(7)
        gripper = OPEN
        if self.phase == "above":
            target = grasp + [0, 0, self.approach_height]
            if np.linalg.norm((target - eef)[:2]) < self.tolerance and abs(target[2] - eef[2]) < 0.02 \
                    and self._aligned(obs):
                self.phase = "descend"
        elif self.phase == "descend":
            target = grasp
            if np.linalg.norm(target - eef) < self.tolerance:
                self.phase, self.timer = "grasp", 0
        elif self.phase == "grasp":
            target, gripper = grasp, CLOSE
            self.timer += 1
            if self.timer >= self.grasp_steps:
                self.phase = "lift"
                self.lift_from = eef.copy()
        elif self.phase == "lift":
            gripper = CLOSE
            target = self.lift_from + [0, 0, self.lift_height]
            place = self.place_point()
            if place is not None and eef[2] > self.lift_from[2] + self.lift_height - 0.02:
                self.phase = "carry"
                self.carry_offset = eef - grasp  # gripper-to-grasp-point offset while holding
        elif self.phase == "carry":
            gripper = CLOSE
            place = self.place_point()
            target = place + self.carry_offset + [0, 0, self.approach_height]
            target[2] = max(target[2], eef[2] - 0.01)  # do not sink while moving across
            if np.linalg.norm((target - eef)[:2]) < self.tolerance:
                self.phase = "lower"
        elif self.phase == "lower":
            gripper = CLOSE
            target = self.place_point() + self.carry_offset + [0, 0, self.place_clearance()]
            if np.linalg.norm(target - eef) < self.tolerance or eef[2] < target[2] + 0.002:
                self.phase, self.timer = "release", 0
        else:  # release, then back off upwards
            target = eef + [0, 0, 0.0 if self.timer < self.release_steps else 0.05]
            self.timer += 1
        action[:3] = move(eef, target)
        action[3:6] = self._rotation(obs)
        action[6] = gripper
        return action.astype(np.float32)

    def place_clearance(self) -> float:
        return 0.01

    def _aligned(self, obs: dict) -> bool:
        yaw = self.target_yaw()
        if yaw is None:
            return True
        return abs(wrap(yaw - quat_to_yaw(obs["observation.state"][3:7]), np.pi / 2)) < 0.05

    def _rotation(self, obs: dict) -> np.ndarray:
        yaw = self.target_yaw()
        if yaw is None or self.phase not in ("above", "descend"):
            return np.zeros(3)
        error = wrap(yaw - quat_to_yaw(obs["observation.state"][3:7]), np.pi / 2)
        return np.array([0.0, 0.0, np.clip(error / 0.5 * 2.0, -1.0, 1.0)])


class LiftExpert(PickPlaceExpert):
    def grasp_point(self) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.env.raw.cube_body_id])


class StackExpert(PickPlaceExpert):
    def grasp_point(self) -> np.ndarray:
        return np.array(self.sim.data.body_xpos[self.env.raw.cubeA_body_id])

    def place_point(self) -> np.ndarray:
        # cubeA's center goes one cube height above cubeB's center
        return np.array(self.sim.data.body_xpos[self.env.raw.cubeB_body_id]) + [0, 0, 0.045]

    def place_clearance(self) -> float:
        return 0.005


class PickPlaceCanExpert(PickPlaceExpert):
    lift_height = 0.2

    def grasp_point(self) -> np.ndarray:
        raw = self.env.raw
        return np.array(self.sim.data.body_xpos[raw.obj_body_id["Can"]])

    def place_point(self) -> np.ndarray:
        raw = self.env.raw
        target = np.array(raw.target_bin_placements[raw.object_to_id["can"]])
        target[2] = self.grasp_point()[2] if self.phase in ("above", "descend") else target[2] + 0.06
        return target

    def place_clearance(self) -> float:
        return 0.04


class NutAssemblySquareExpert(PickPlaceExpert):
    lift_height = 0.15

    def _handle_site(self) -> int:
        raw = self.env.raw
        return raw.sim.model.site_name2id(raw.nuts[0].important_sites["handle"])

    def grasp_point(self) -> np.ndarray:
        return np.array(self.sim.data.site_xpos[self._handle_site()]) + [0, 0, -0.005]

    def place_point(self) -> np.ndarray:
        raw = self.env.raw
        peg = np.array(self.sim.data.body_xpos[raw.peg1_body_id])
        nut = np.array(self.sim.data.body_xpos[raw.obj_body_id[raw.nuts[0].name]])
        handle = self.grasp_point()
        # the handle must end where it would be if the nut's center sat on the peg
        return np.array([peg[0], peg[1], raw.table_offset[2] + 0.04]) + (handle - nut) * [1, 1, 0]

    def target_yaw(self) -> float:
        raw = self.env.raw
        quat_wxyz = self.sim.data.body_xquat[raw.obj_body_id[raw.nuts[0].name]]
        nut_yaw = quat_to_yaw(np.array([*quat_wxyz[1:], quat_wxyz[0]]))
        return nut_yaw + np.pi / 2  # fingers close across the handle

    def place_clearance(self) -> float:
        return 0.0


EXPERTS = {"Lift": LiftExpert, "Stack": StackExpert, "PickPlaceCan": PickPlaceCanExpert,
           "NutAssemblySquare": NutAssemblySquareExpert}
