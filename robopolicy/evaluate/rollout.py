"""One evaluation episode: a policy's chunk executor driving an env from a fixed seed.

With an expert given (DAgger), the expert shadows the rollout: it sees every observation the
policy's actions lead to, keeps its own phase through them, and its action there is recorded as
the label. The policy's action is what the env executes (or, with probability `beta`, the
expert's: DAgger's mixture for early rounds), so the labelled states are the policy's own.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class EpisodeResult:
    seed: int
    success: bool
    length: int
    first_success_step: int | None
    inferences: int
    seconds: float
    task: str = ""
    video: str | None = None
    error: str | None = None
    attempts: int = 1
    labels: list | None = None  # with an expert: every visited observation with the expert's action

    def to_json(self) -> dict:
        out = asdict(self)
        out.pop("labels")
        return out


@dataclass
class VideoQuota:
    """Record videos until `successes` successful and `failures` failed episodes are on disk.

    Rendering is the expensive part of an evaluation on a CPU (software OpenGL), so recording stops
    after twice the quota in attempts: a policy that never fails does not get every episode filmed
    while the failure quota waits to be filled.
    """

    successes: int
    failures: int
    recorded: dict = field(default_factory=lambda: {True: 0, False: 0})
    attempts: int = 0

    @property
    def wants_more(self) -> bool:
        unfilled = self.recorded[True] < self.successes or self.recorded[False] < self.failures
        return unfilled and self.attempts < 2 * (self.successes + self.failures)

    def keep(self, success: bool) -> bool:
        self.attempts += 1
        limit = self.successes if success else self.failures
        if self.recorded[success] < limit:
            self.recorded[success] += 1
            return True
        return False


def run_episode(env, executor, seed: int, max_steps: int | None = None, record: bool = False,
                video_dir: Path | None = None, fps: int = 20, options: dict | None = None,
                expert=None, beta: float = 0.0) -> tuple[EpisodeResult, list]:
    """Roll out until success or the step limit. Returns the result and the rendered frames (if `record`);
    with an `expert`, `result.labels` holds the expert-labelled frames."""
    start = time.perf_counter()
    obs, _ = env.reset(seed=seed, options=options) if options else env.reset(seed=seed)
    executor.reset(seed)
    labels = None
    if expert is not None:
        expert.reset()
        labels, mix = [], np.random.default_rng([seed, 0xDA66])
    frames = [env.render()] if record else []
    limit = max_steps or env.max_steps
    success, first = False, None
    steps = 0
    for steps in range(1, limit + 1):
        action = executor.act({**obs, "task": env.task})
        if expert is not None:
            label = np.asarray(expert.act(obs), dtype=np.float32)
            labels.append({**obs, "action": label})
            if beta > 0 and mix.random() < beta:
                action = label
        obs, _, terminated, truncated, info = env.step(np.asarray(action, dtype=np.float32))
        if record:
            frames.append(env.render())
        if info.get("is_success"):
            success, first = True, steps
        if terminated or truncated:
            break
    result = EpisodeResult(seed=seed, success=success, length=steps, first_success_step=first,
                           inferences=executor.inferences, seconds=time.perf_counter() - start, task=env.task,
                           labels=labels)
    return result, frames


def write_video(frames: list, path: Path, fps: int = 20) -> Path:
    """H.264 mp4 (plays in browsers and notebooks); frames are uint8 (H, W, 3), even sizes."""
    from robopolicy.data.video import VideoEncoder

    h, w = frames[0].shape[:2]
    encoder = VideoEncoder(path, fps=fps, width=w - w % 2, height=h - h % 2, codec="h264", crf=23, gop=30)
    for frame in frames:
        encoder.write(np.ascontiguousarray(frame[: h - h % 2, : w - w % 2]))
    encoder.close()
    return path
