"""Record a deployment as a LeRobot v3.0 dataset, so deployments become training data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from robopolicy.data.writer import DatasetWriter


class DeployRecorder:
    """Every tick's observation and the action actually sent, as episodes of at most `segment_s`.

    The writer is durable: each saved episode's files are closed and journaled before the run goes
    on, so a kill -9 of the deployment loses at most the segment in progress; `robopolicy dataset
    finalize DIR` then makes the saved segments a dataset. Ctrl-C, SIGTERM and safe stops save the
    last, shorter segment and finalize as usual. `segment_s=None` keeps the whole run one episode."""

    def __init__(self, root: str | Path, robot, fps: int, task: str, video_codec: str = "av1", overwrite: bool = False,
                 segment_s: float | None = 10.0):
        features = dict(robot.observation_features)
        features.update(robot.action_features)
        self.keys = [k for k in features if k != "action"]
        self.task = task or "deployment"
        self.writer = DatasetWriter(root, fps=fps, features=features, robot_type=getattr(robot, "name", None),
                                    video_codec=video_codec, overwrite=overwrite, durable=True)
        self.frames = 0
        self.segment_frames = max(1, round(segment_s * fps)) if segment_s else None

    def add(self, observation: dict, action: np.ndarray) -> None:
        self.writer.add_frame({**{k: observation[k] for k in self.keys}, "action": action}, task=self.task)
        self.frames += 1
        if self.segment_frames and self.writer.episode_buffer_length >= self.segment_frames:
            self.writer.save_episode()

    def close(self) -> None:
        if self.writer.episode_buffer_length:
            self.writer.save_episode()
        if self.writer.episodes:
            self.writer.finalize()
        else:  # nothing was executed: leave no half-made dataset behind
            shutil.rmtree(self.writer.root, ignore_errors=True)
