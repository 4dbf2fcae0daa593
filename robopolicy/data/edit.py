"""Building new datasets from existing ones, episode by episode.

A LeRobot v3.0 dataset packs many episodes into each parquet and mp4 file, so adding to one in
place means rewriting its files anyway. New datasets are therefore written whole: episodes are
read from their source (`LeRobotDataset`) and written again through a `DatasetWriter`, which
recomputes episode indices, tasks and statistics. What an episode carries — its frames, its
task per frame and its `source` tag — is kept.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from robopolicy.data import format as fmt
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.writer import DatasetWriter


def copy_episodes(dataset: LeRobotDataset, writer: DatasetWriter, episodes: Iterable[int] | None = None) -> int:
    """Append `episodes` (default: all) of `dataset` to `writer`; returns how many were written."""
    missing = [k for k in writer.user_keys if k not in dataset.features]
    if missing:
        raise ValueError(f"dataset {dataset.root} lacks features {missing} that the new dataset has")
    written = 0
    for e in range(dataset.num_episodes) if episodes is None else episodes:
        rows = np.arange(dataset.episodes.from_index[e], dataset.episodes.to_index[e])
        values = {k: (dataset.frames(k, rows) if k in dataset.camera_keys else dataset.columns[k][rows])
                  for k in writer.user_keys}
        for i, task in enumerate(dataset.task_strings(rows)):
            writer.add_frame({k: v[i] for k, v in values.items()}, task=task)
        source = dataset.episodes.sources[e]
        writer.save_episode(source=None if source == fmt.DEFAULT_SOURCE else source)
        written += 1
    return written
