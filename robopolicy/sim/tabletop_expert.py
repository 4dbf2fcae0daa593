"""The scripted expert of the tabletop tasks (robopolicy.sim.tabletop): pick a cube into the bowl,
or push it left or right, from any state of the env (it reads the instruction and the objects'
positions and keeps its own phase)."""

from __future__ import annotations

import numpy as np

from robopolicy.sim.tabletop import (BOWL_RIM_HEIGHT, COLORS, CUBE_HALF, DIRECTIONS, STEP_METRES, TCP_LOW,
                                     TabletopEnv, parse_instruction)


class TabletopExpert:
    """Scripted demonstrator: a phase state machine on privileged state, for collecting datasets.

    It reads the instruction from `env.task` and the objects from `observation.environment_state`.
    Actions step the env's commanded target (`env.target`) toward a way-point, at most `speed` per
    step, so the commanded path is exact; phases advance when the measured gripper position has
    arrived, so the gripper never acts before the gantry has caught up with its target.

        pick  above -> descend -> grasp -> lift -> carry -> lower -> release -> retreat
        push  above -> descend -> push -> retreat   (fingers closed, starting on the far side of the
              cube from the push direction, pushing ~12 cm)
    """

    approach_height = 0.1  # TCP z for travel: the fingertips clear the cubes and the bowl rim
    carry_height = 0.15
    release_height = BOWL_RIM_HEIGHT + CUBE_HALF + 0.015  # held cube's bottom 1.5 cm above the rim
    push_height = CUBE_HALF  # finger pads cover the cube's face
    push_standoff = 0.065  # TCP distance behind the cube's centre before pushing
    push_through = 0.12
    pusher_half = 0.012  # closed fingers' half thickness along y
    grip_steps = 6
    release_steps = 5
    tolerance = 0.006

    def __init__(self, env: TabletopEnv):
        self.env = env
        self.reset()

    def reset(self) -> None:
        self.instruction = parse_instruction(self.env.task)
        self.phase = "above"
        self.timer = 0
        self.push_end_y = 0.0

    def act(self, obs: dict) -> np.ndarray:
        if self.instruction.text != self.env.task:  # the env was reset without resetting the expert
            self.reset()
        tcp = np.asarray(obs["observation.state"][:3], dtype=np.float64)
        objects = np.asarray(obs["observation.environment_state"], dtype=np.float64).reshape(-1, 3)
        cube = objects[COLORS.index(self.instruction.color)]
        if self.instruction.kind == "pick":
            waypoint, gripper, speed = self._pick(tcp, cube, objects[-1])
        else:
            waypoint, gripper, speed = self._push(tcp, cube)
        delta = np.clip((waypoint - self.env.target) / STEP_METRES, -speed, speed)
        return np.array([*delta, gripper], dtype=np.float32)

    def _arrived(self, tcp: np.ndarray, waypoint: np.ndarray) -> bool:
        return bool(np.all(np.abs(tcp - waypoint) < self.tolerance))

    def _pick(self, tcp: np.ndarray, cube: np.ndarray, bowl: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Way-point, gripper command and speed limit for the current pick phase."""
        # while holding, aim the cube (not the TCP) at the bowl's centre
        over_bowl = bowl[:2] - (cube - tcp)[:2]
        if self.phase == "above":
            waypoint = np.array([*cube[:2], self.approach_height])
            if self._arrived(tcp, waypoint):
                self.phase = "descend"
            return waypoint, -1.0, 1.0
        if self.phase == "descend":
            waypoint = np.array([*cube[:2], max(cube[2], TCP_LOW[2])])
            if self._arrived(tcp, waypoint):
                self.phase, self.timer = "grasp", 0
            return waypoint, -1.0, 0.5
        if self.phase == "grasp":
            self.timer += 1
            if self.timer >= self.grip_steps:
                self.phase = "lift"
            return self.env.target.copy(), 1.0, 1.0
        if self.phase == "lift":
            waypoint = np.array([*tcp[:2], self.carry_height])
            if tcp[2] > self.carry_height - 0.02:
                self.phase = "carry"
            return waypoint, 1.0, 1.0
        if self.phase == "carry":
            waypoint = np.array([*over_bowl, self.carry_height])
            if self._arrived(tcp[:2], waypoint[:2]):
                self.phase = "lower"
            return waypoint, 1.0, 1.0
        if self.phase == "lower":
            waypoint = np.array([*over_bowl, bowl[2] + self.release_height])
            if self._arrived(tcp, waypoint):
                self.phase, self.timer = "release", 0
            return waypoint, 1.0, 0.5
        if self.phase == "release":
            self.timer += 1
            if self.timer >= self.release_steps:
                self.phase = "retreat"
            return self.env.target.copy(), -1.0, 1.0
        return np.array([*self.env.target[:2], self.carry_height]), -1.0, 0.5

    def _push(self, tcp: np.ndarray, cube: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Way-point, gripper command and speed limit for the current push phase."""
        sign = DIRECTIONS[self.instruction.direction]
        behind = cube[1] - sign * self.push_standoff
        if self.phase == "above":
            waypoint = np.array([cube[0], behind, self.approach_height])
            if self._arrived(tcp, waypoint):
                self.phase = "descend"
            return waypoint, 1.0, 1.0
        if self.phase == "descend":
            waypoint = np.array([cube[0], behind, self.push_height])
            if self._arrived(tcp, waypoint):
                self.phase = "push"
                # the pusher meets the cube's face, then carries it push_through further
                self.push_end_y = cube[1] + sign * (self.push_through - CUBE_HALF - self.pusher_half)
            return waypoint, 1.0, 0.5
        if self.phase == "push":
            waypoint = np.array([cube[0], self.push_end_y, self.push_height])
            if abs(tcp[1] - self.push_end_y) < self.tolerance:
                self.phase = "retreat"
            return waypoint, 1.0, 0.5
        return np.array([*self.env.target[:2], self.approach_height]), 1.0, 0.5
