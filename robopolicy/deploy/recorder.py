"""Record a deployment as a LeRobot v3.0 dataset, so deployments become training data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from robopolicy.data.writer import DatasetWriter


class DeployRecorder:
    """One episode per deployment run: every tick's observation and the action actually sent.

    The writer is durable: once the run's episode is saved (at the end of the run, also on Ctrl-C,
    SIGTERM or a safe stop) its files are closed and journaled, so a later kill cannot take it."""

    def __init__(self, root: str | Path, robot, fps: int, task: str, video_codec: str = "av1", overwrite: bool = False):
        features = dict(robot.observation_features)
        features.update(robot.action_features)
        self.keys = [k for k in features if k != "action"]
        self.task = task or "deployment"
        self.writer = DatasetWriter(root, fps=fps, features=features, robot_type=getattr(robot, "name", None),
                                    video_codec=video_codec, overwrite=overwrite, durable=True)
        self.frames = 0

    def add(self, observation: dict, action: np.ndarray) -> None:
        self.writer.add_frame({**{k: observation[k] for k in self.keys}, "action": action}, task=self.task)
        self.frames += 1

    def close(self) -> None:
        if self.writer.episode_buffer_length:
            self.writer.save_episode()
        if self.writer.episodes:
            self.writer.finalize()
        else:  # nothing was executed: leave no half-made dataset behind
            shutil.rmtree(self.writer.root, ignore_errors=True)
