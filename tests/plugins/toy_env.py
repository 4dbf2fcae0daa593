"""A fast point-mass env for testing the collect / eval machinery, registered as test/reach.

A point on a line must reach a target; state = (position, velocity), environment_state = target.
Seeds listed in the env var TOY_CRASH_SEEDS raise mid-episode; TOY_EXIT_SEEDS kill the worker
process; TOY_HANG_SEEDS sleep forever — the faults the evaluator must survive. TOY_STEP_SLEEP
(seconds) slows every step, for tests that must interrupt a job part-way.
"""

import os
import time

import gymnasium as gym
import numpy as np

from robopolicy.sim.registry import register


def _seeds(var):
    return {int(s) for s in os.environ.get(var, "").split(",") if s.strip()}


class ReachEnv(gym.Env):
    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}
    task = "reach the target"

    def __init__(self, images=False, image_size=84, max_steps=None, render_size=None, goal_offset=0.0):
        self.max_steps = max_steps or 60
        self.goal_offset = goal_offset  # success is at target + goal_offset (the observed target stays)
        self.render_size = render_size or 64
        self.features = {
            "observation.state": {"dtype": "float32", "shape": [2], "names": ["x", "v"]},
            "observation.environment_state": {"dtype": "float32", "shape": [1], "names": ["target"]},
            "action": {"dtype": "float32", "shape": [1], "names": ["force"]},
        }
        self.observation_space = gym.spaces.Dict({
            "observation.state": gym.spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "observation.environment_state": gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)})
        self.action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, seed=None, options=None):
        rng = np.random.default_rng(seed)
        self.seed_ = seed
        self.x, self.v, self.t = 0.0, 0.0, 0
        self.target = float(rng.uniform(-1, 1))
        return self._obs(), {"is_success": False}

    def _obs(self):
        return {"observation.state": np.array([self.x, self.v], np.float32),
                "observation.environment_state": np.array([self.target], np.float32)}

    def step(self, action):
        a = float(np.clip(np.asarray(action).reshape(-1)[0], -1, 1))
        self.t += 1
        if os.environ.get("TOY_STEP_SLEEP"):
            time.sleep(float(os.environ["TOY_STEP_SLEEP"]))
        if self.t == 5 and self.seed_ in _seeds("TOY_CRASH_SEEDS"):
            raise RuntimeError("simulated simulator error")
        if self.t == 5 and self.seed_ in _seeds("TOY_EXIT_SEEDS"):
            os._exit(3)
        if self.t == 5 and self.seed_ in _seeds("TOY_HANG_SEEDS"):
            time.sleep(3600)
        self.v = 0.8 * self.v + 0.05 * a
        self.x += self.v
        success = abs(self.x - self.target - self.goal_offset) < 0.1 and abs(self.v) < 0.05
        return self._obs(), float(success), success, self.t >= self.max_steps, {"is_success": success}

    def render(self):
        img = np.zeros((self.render_size, self.render_size, 3), np.uint8)
        col = int((self.x + 1.5) / 3 * (self.render_size - 1))
        img[:, max(0, min(self.render_size - 1, col))] = 255
        return img

    def close(self):
        pass


class ReachExpert:
    def __init__(self, env):
        self.env = env

    def reset(self):
        self.phase = "go"

    def act(self, obs):
        x, v = obs["observation.state"]
        target = obs["observation.environment_state"][0]
        return np.array([np.clip(8.0 * (target - x) - 20.0 * v, -1, 1)], np.float32)


register("test/reach", lambda **kw: ReachEnv(**kw), ReachExpert, "1-D point mass reaching a target (tests)")
# the reward moved: success 0.3 beyond the observed target, so a policy imitating the expert fails
# until it changes its behaviour (RL fine-tuning's test)
register("test/reach-shifted", lambda **kw: ReachEnv(**kw), ReachExpert, "test/reach with the goal moved (tests)",
         goal_offset=0.3)
# the same task without a scripted expert: collect and DAgger must refuse it clearly
register("test/reach-noexpert", lambda **kw: ReachEnv(**kw), None, "test/reach without an expert (tests)")
