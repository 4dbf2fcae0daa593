"""Building new datasets from existing ones, episode by episode.

A LeRobot v3.0 dataset packs many episodes into each parquet and mp4 file, so adding to one in
place means rewriting its files anyway. New datasets are therefore written whole: episodes are
read from their source (`LeRobotDataset`) and written again through a `DatasetWriter`, which
recomputes episode indices, tasks and statistics. What an episode carries — its frames, its
task per frame and its `source` tag — is kept.

The verbs of `robopolicy dataset` (filter, delete-episodes, split, merge) are built on that: choose
episodes, write them to a new folder beside the destination, move it into place when complete.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from robopolicy.data import format as fmt
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.writer import DatasetWriter
from robopolicy.errors import DatasetError
from robopolicy.fileio import atomic_directory


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


# ---------------------------------------------------------------------------- edit verbs
def parse_episodes(spec: str, count: int, what: str = "--episodes") -> list[int]:
    """'0,3,5-9' -> [0, 3, 5, 6, 7, 8, 9], checked against `count` episodes (one clear error)."""
    out: list[int] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        try:
            if "-" in part[1:]:
                first, last = (int(x) for x in part.split("-", 1))
                out += list(range(first, last + 1))
            else:
                out.append(int(part))
        except ValueError:
            raise DatasetError(f"{what}: {part!r} is not an episode index or a range like 5-9") from None
    bad = sorted({e for e in out if not 0 <= e < count})
    if bad:
        raise DatasetError(f"{what}: episodes {bad} do not exist (the dataset has {count}: 0-{count - 1})")
    if not out:
        raise DatasetError(f"{what}: no episodes named")
    return sorted(set(out))


def select_episodes(ds: LeRobotDataset, episodes: str | None = None, task: str | None = None,
                    source: str | None = None, min_length: int | None = None,
                    max_length: int | None = None) -> list[int]:
    """The episodes that pass every given rule (all of them when no rule is given)."""
    keep = parse_episodes(episodes, ds.num_episodes) if episodes else list(range(ds.num_episodes))
    eps = ds.episodes
    if task is not None:
        keep = [e for e in keep if task in eps.tasks[e]]
    if source is not None:
        keep = [e for e in keep if eps.sources[e] == source]
    if min_length is not None:
        keep = [e for e in keep if eps.length[e] >= min_length]
    if max_length is not None:
        keep = [e for e in keep if eps.length[e] <= max_length]
    return keep


def _video_codec(ds: LeRobotDataset) -> str:
    """The source's video codec where the writer has it (so an edit does not change the format)."""
    for key in ds.camera_keys:
        codec = ds.features[key].get("info", {}).get("video.codec")
        if codec in ("av1", "h264"):
            return codec
    return "av1"


def write_episodes(sources: list[tuple[LeRobotDataset, list[int]]], out: str | Path, overwrite: bool = False,
                   in_place_of: Path | None = None) -> Path:
    """Write the given episodes of one or more datasets, in order, as a new dataset at `out`.

    The new folder is built beside its destination and moved into place only when complete, so a
    kill leaves the destination as it was. With `in_place_of` (the source's own folder) the old folder
    is swapped out in one rename and deleted afterwards.
    """
    out = Path(out)
    first = sources[0][0]
    if not any(episodes for _, episodes in sources):
        raise DatasetError(f"no episodes left to write to {out}")
    if in_place_of is None and out.exists() and any(out.iterdir()) and not overwrite:
        raise DatasetError(f"output folder {out} already exists and is not empty (--overwrite replaces it)")
    with atomic_directory(out) as tmp:  # built beside `out`, renamed into place when complete
        with DatasetWriter(tmp, fps=first.fps, features=first.features, robot_type=first.info.get("robot_type"),
                           video_codec=_video_codec(first)) as writer:
            for ds, episodes in sources:
                copy_episodes(ds, writer, episodes)
    return out


def check_mergeable(datasets: list[LeRobotDataset]) -> None:
    """Features (names, dtypes, shapes), fps and robot type must agree; the error says which differ."""
    first = datasets[0]
    for ds in datasets[1:]:
        problems = []
        if ds.fps != first.fps:
            problems.append(f"fps {ds.fps} vs {first.fps}")
        if ds.info.get("robot_type") != first.info.get("robot_type"):
            problems.append(f"robot_type {ds.info.get('robot_type')!r} vs {first.info.get('robot_type')!r}")
        mine = {k: (v["dtype"], list(v["shape"])) for k, v in ds.features.items() if k not in fmt.DEFAULT_FEATURES}
        theirs = {k: (v["dtype"], list(v["shape"])) for k, v in first.features.items() if k not in fmt.DEFAULT_FEATURES}
        for key in sorted(set(mine) | set(theirs)):
            if key not in mine:
                problems.append(f"no feature {key!r}")
            elif key not in theirs:
                problems.append(f"extra feature {key!r}")
            elif mine[key] != theirs[key]:
                problems.append(f"{key!r} is {mine[key][0]} {mine[key][1]} vs {theirs[key][0]} {theirs[key][1]}")
        if problems:
            raise DatasetError(f"cannot merge {ds.root} into {first.root}: " + "; ".join(problems))


def split_episodes(count: int, fractions: list[float], seed: int) -> list[list[int]]:
    """Shuffle episode indices (seeded) and cut them by `fractions` (summing to 1); each part sorted."""
    if any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise DatasetError(f"split fractions must be positive and sum to 1, got {fractions}")
    order = np.random.default_rng(seed).permutation(count)
    bounds = np.round(np.cumsum([0.0, *fractions]) * count).astype(int)
    parts = [sorted(order[a:b].tolist()) for a, b in zip(bounds[:-1], bounds[1:])]
    if any(not p for p in parts):
        raise DatasetError(f"{count} episodes cannot be split into {len(fractions)} non-empty parts by {fractions}")
    return parts
