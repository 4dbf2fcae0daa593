"""The LeRobotDataset v3.0 on-disk format: paths, metadata files and feature specs.

A v3.0 dataset folder holds

    meta/info.json                      format version, fps, features, path templates
    meta/stats.json                     normalization statistics per feature
    meta/tasks.parquet                  task strings and their task_index
    meta/episodes/chunk-XXX/file-YYY.parquet   one row per episode: length, row range, video spans, stats
    data/chunk-XXX/file-YYY.parquet     one row per frame: low-dim features (+ PNG images if not video)
    videos/<camera key>/chunk-XXX/file-YYY.mp4  several episodes concatenated per file

This module only knows about files and JSON; reading frames lives in `dataset.py`, writing in
`writer.py`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from robopolicy.errors import DatasetError

CODEBASE_VERSION = "v3.0"
DEFAULT_CHUNKS_SIZE = 1000
DEFAULT_DATA_FILE_SIZE_MB = 100
DEFAULT_VIDEO_FILE_SIZE_MB = 200
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
# One line per saved episode of a durable write in progress (robopolicy.data.writer); gone once
# meta/info.json is written.
JOURNAL_PATH = "meta/episodes.journal.jsonl"
# An episode's origin, in the episode table's optional `source` column (datasets without the
# column hold demonstrations only): "demonstration", "dart" (noise injected while recording, clean
# expert actions kept), "correction" (a policy's own rollout labelled by the expert, DAgger).
DEFAULT_SOURCE = "demonstration"

# Columns LeRobot adds to every frame; they are bookkeeping, never policy inputs.
DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
VISUAL_DTYPES = ("video", "image")
NUMERIC_DTYPES = ("float32", "float64", "int64", "int32", "bool")


def load_json(path: Path) -> Any:
    """Read a JSON file, turning every failure into a one-line DatasetError naming the file."""
    if not path.is_file():
        raise DatasetError(f"missing file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from None
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except RecursionError:
        raise DatasetError(f"{path}: JSON nested too deeply") from None


def write_json_atomic(path: Path, data: Any, indent: int = 4) -> None:
    """Write JSON through a temporary file and rename, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=indent)
        f.write("\n")
    os.replace(tmp, path)


def load_info(root: Path) -> dict[str, Any]:
    """Load and validate meta/info.json; explain how to convert older format versions."""
    if not root.exists():
        raise DatasetError(f"dataset folder not found: {root}")
    if not root.is_dir():
        raise DatasetError(f"dataset path is not a folder: {root}")
    journal = root / JOURNAL_PATH
    if not (root / INFO_PATH).is_file() and journal.is_file():
        saved = sum(1 for line in journal.read_text().splitlines() if line.strip())
        raise DatasetError(f"{root}: an interrupted write, not a finished dataset: {saved} episodes are saved"
                           f" ({JOURNAL_PATH}); `robopolicy dataset finalize {root}` keeps them as a dataset,"
                           f" `robopolicy collect ... --out {root} --resume` continues a collection")
    info = load_json(root / INFO_PATH)
    if not isinstance(info, dict):
        raise DatasetError(f"{root / INFO_PATH}: must be a JSON object, got {type(info).__name__}")
    version = info.get("codebase_version")
    if version != CODEBASE_VERSION:
        hint = ""
        if isinstance(version, str) and version.startswith("v2"):
            hint = (
                " - convert it with LeRobot's `python -m lerobot.datasets.v30.convert_dataset_v21_to_v30"
                " --repo-id=<id>` and load the converted copy"
            )
        raise DatasetError(
            f"{root / INFO_PATH}: codebase_version is {version!r}, robopolicy reads {CODEBASE_VERSION}{hint}"
        )
    for key in ("fps", "features", "total_episodes", "total_frames", "data_path"):
        if key not in info:
            raise DatasetError(f"{root / INFO_PATH}: required key {key!r} is missing")
    fps = info["fps"]
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise DatasetError(f"{root / INFO_PATH}: fps must be a positive number, got {fps!r}")
    if not isinstance(info["features"], dict):
        raise DatasetError(f"{root / INFO_PATH}: features must be an object mapping names to specs")
    for key in ("total_episodes", "total_frames"):
        if isinstance(info[key], bool) or not isinstance(info[key], int) or info[key] < 0:
            raise DatasetError(f"{root / INFO_PATH}: {key} must be a non-negative integer, got {info[key]!r}")
    for name, spec in info["features"].items():
        if not isinstance(spec, dict) or "dtype" not in spec or "shape" not in spec:
            raise DatasetError(f"{root / INFO_PATH}: feature {name!r} needs 'dtype' and 'shape'")
        shape = spec["shape"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                  for d in shape):
            raise DatasetError(f"{root / INFO_PATH}: feature {name!r} has shape {shape!r}; it must be a list of"
                               f" positive integers")
    return info


def visual_keys(features: dict[str, dict]) -> list[str]:
    """Camera features (stored as video or as images in parquet), in metadata order."""
    return [k for k, v in features.items() if v["dtype"] in VISUAL_DTYPES]


def video_keys(features: dict[str, dict]) -> list[str]:
    return [k for k, v in features.items() if v["dtype"] == "video"]


def numeric_keys(features: dict[str, dict]) -> list[str]:
    """Non-visual, non-string features (state, action, bookkeeping columns)."""
    return [k for k, v in features.items() if v["dtype"] in NUMERIC_DTYPES]


def image_hwc(spec: dict) -> tuple[int, int, int]:
    """Image shape as (height, width, channels) whatever order `names` declares."""
    shape = list(spec["shape"])
    names = spec.get("names") or ["height", "width", "channels"]
    if len(shape) != 3:
        raise DatasetError(f"image feature shape must have 3 dims, got {shape}")
    if list(names) == ["channels", "height", "width"]:
        return shape[1], shape[2], shape[0]
    return shape[0], shape[1], shape[2]


def data_file(root: Path, info: dict, chunk_index: int, file_index: int) -> Path:
    return root / info["data_path"].format(chunk_index=chunk_index, file_index=file_index)


def video_file(root: Path, info: dict, key: str, chunk_index: int, file_index: int) -> Path:
    template = info.get("video_path") or VIDEO_PATH
    return root / template.format(video_key=key, chunk_index=chunk_index, file_index=file_index)


def next_chunk_file(chunk_index: int, file_index: int, chunks_size: int) -> tuple[int, int]:
    """The (chunk, file) pair after this one: files roll over into a new chunk folder every chunks_size."""
    file_index += 1
    if file_index >= chunks_size:
        return chunk_index + 1, 0
    return chunk_index, file_index


def is_finite_number(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)
