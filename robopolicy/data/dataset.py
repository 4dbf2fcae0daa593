"""Read a LeRobotDataset v3.0 folder (or hub repo) into memory-mapped, validated arrays.

Loading reads every parquet file once: low-dim features become numpy arrays (bit-exact with the
parquet), episode boundaries become index arrays, and the whole thing is checked against
meta/info.json so that a malformed dataset fails here, with the file and field named, instead of
yielding a silently wrong sample later. Camera frames come from a `FrameCache` that decodes each
video once.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robopolicy.data import format as fmt
from robopolicy.data import stats as stats_lib
from robopolicy.errors import DatasetError


def read_parquet(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """pq.read_table with a one-line error naming the file when it is missing or corrupt."""
    if not path.is_file():
        raise DatasetError(f"missing parquet file: {path}")
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError, KeyError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetError(f"cannot read parquet file {path}: {msg}") from None


def column_to_numpy(table: pa.Table, name: str, path: Path, expected_shape: Sequence[int]) -> np.ndarray:
    """One feature column as an (N, *shape) array, checking the per-frame size against info.json."""
    if name not in table.column_names:
        raise DatasetError(f"{path}: column {name!r} declared in meta/info.json is missing")
    column = table.column(name).combine_chunks()
    size = int(np.prod(expected_shape))
    if pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
        lengths = (
            np.full(len(column), column.type.list_size)
            if pa.types.is_fixed_size_list(column.type)
            else np.diff(column.offsets.to_numpy())
        )
        bad = np.flatnonzero(lengths != size)
        if bad.size:
            raise DatasetError(
                f"{path}: feature shape mismatch in column {name!r}: row {bad[0]} has {lengths[bad[0]]} values,"
                f" meta/info.json declares shape {list(expected_shape)}"
            )
        values = column.flatten().to_numpy(zero_copy_only=False)
        return values.reshape((len(column), *expected_shape))
    if size != 1:
        raise DatasetError(
            f"{path}: feature shape mismatch in column {name!r}: one scalar per row,"
            f" meta/info.json declares shape {list(expected_shape)}"
        )
    return column.to_numpy(zero_copy_only=False).reshape(len(column), *expected_shape)


@dataclass
class Episodes:
    """Episode metadata as parallel arrays (row i describes episode i)."""

    length: np.ndarray
    from_index: np.ndarray
    to_index: np.ndarray
    tasks: list[list[str]]
    sources: list[str]  # where each episode came from (fmt.DEFAULT_SOURCE unless tagged)
    data_files: list[tuple[int, int]]
    # per video key: (chunk_index, file_index, from_timestamp) arrays
    video_chunk: dict[str, np.ndarray] = field(default_factory=dict)
    video_file: dict[str, np.ndarray] = field(default_factory=dict)
    video_from_ts: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.length)


def load_episodes(root: Path, info: dict) -> Episodes:
    files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not files:
        raise DatasetError(f"missing episode metadata: no parquet files under {root / 'meta' / 'episodes'}")
    table = pa.concat_tables([read_parquet(f) for f in files], promote_options="default")
    required = ["episode_index", "length", "dataset_from_index", "dataset_to_index",
                "data/chunk_index", "data/file_index"]
    for col in required:
        if col not in table.column_names:
            raise DatasetError(f"{files[0]}: episode metadata column {col!r} is missing")
    ep_index = table.column("episode_index").to_numpy()
    order = np.argsort(ep_index, kind="stable")
    ep_index = ep_index[order]
    expected = np.arange(len(ep_index))
    if not np.array_equal(ep_index, expected):
        missing = sorted(set(range(int(ep_index.max()) + 1)) - set(ep_index.tolist()))
        detail = f"episode {missing[0]} is missing" if missing else "episode indices are repeated"
        raise DatasetError(f"{root / 'meta' / 'episodes'}: episode index gap: {detail} (indices must run 0..N-1)")
    if len(ep_index) != info["total_episodes"]:
        raise DatasetError(
            f"{root / fmt.INFO_PATH}: total_episodes is {info['total_episodes']} but meta/episodes lists {len(ep_index)}"
        )

    def col(name: str) -> np.ndarray:
        return table.column(name).to_numpy()[order]

    tasks_col = table.column("tasks").to_pylist() if "tasks" in table.column_names else [[] for _ in order]
    sources_col = table.column("source").to_pylist() if "source" in table.column_names else None
    episodes = Episodes(
        length=col("length").astype(np.int64),
        from_index=col("dataset_from_index").astype(np.int64),
        to_index=col("dataset_to_index").astype(np.int64),
        tasks=[tasks_col[i] or [] for i in order],
        sources=([str(sources_col[i] or fmt.DEFAULT_SOURCE) for i in order] if sources_col is not None
                 else [fmt.DEFAULT_SOURCE] * len(order)),
        data_files=list(zip(col("data/chunk_index").tolist(), col("data/file_index").tolist())),
    )
    for key in fmt.video_keys(info["features"]):
        prefix = f"videos/{key}/"
        for suffix in ("chunk_index", "file_index", "from_timestamp"):
            if prefix + suffix not in table.column_names:
                raise DatasetError(f"{files[0]}: episode metadata column {prefix + suffix!r} is missing")
        episodes.video_chunk[key] = col(prefix + "chunk_index")
        episodes.video_file[key] = col(prefix + "file_index")
        episodes.video_from_ts[key] = col(prefix + "from_timestamp").astype(np.float64)
    return episodes


def load_tasks(root: Path) -> list[str]:
    """Task strings ordered by task_index (LeRobot stores them as a pandas index column)."""
    path = root / fmt.TASKS_PATH
    table = read_parquet(path)
    if "task_index" not in table.column_names:
        raise DatasetError(f"{path}: column 'task_index' is missing")
    text_cols = [c for c in table.column_names if c != "task_index"]
    if not text_cols:
        raise DatasetError(f"{path}: no task string column")
    name = "task" if "task" in text_cols else text_cols[0]
    indices = table.column("task_index").to_pylist()
    texts = table.column(name).to_pylist()
    tasks = [""] * len(indices)
    for i, t in zip(indices, texts):
        if not 0 <= i < len(tasks):
            raise DatasetError(f"{path}: task_index {i} out of range for {len(tasks)} tasks")
        tasks[i] = t
    return tasks


HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_root(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> Path:
    """A local folder as is; an `owner/name` that is not a local folder is downloaded from the hub."""
    path = Path(path_or_repo_id).expanduser()
    if path.exists() or not HUB_REPO_ID.match(str(path_or_repo_id)):
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_repo_id), repo_type="dataset", revision=revision))
    except Exception as err:  # network, auth, offline mode, missing repo: all one message
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DatasetError(
            f"dataset {path_or_repo_id!r} is not a local folder and could not be downloaded from the hub: {first}"
        ) from None


class LeRobotDataset:
    """A LeRobotDataset v3.0 loaded for training and inspection.

    Attributes a user relies on:
      features     feature specs from meta/info.json
      columns      dict feature -> (N, *shape) numpy array for every non-camera feature
      camera_keys  camera features, video- or image-stored
      episodes     `Episodes` (per-episode row ranges, tasks, video spans)
      tasks        task strings by task_index
      stats        meta/stats.json as numpy arrays (computed from the data if the file is absent)
    `frames(key, rows)` returns uint8 (n, H, W, 3) camera frames through the decoded-frame cache.
    """

    def __init__(self, root: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                 revision: str | None = None):
        self.root = resolve_root(root, revision)
        self.info = fmt.load_info(self.root)
        self.features: dict[str, dict] = self.info["features"]
        self.fps: int = int(self.info["fps"])
        self.camera_keys = fmt.visual_keys(self.features)
        self.episodes = load_episodes(self.root, self.info)
        self.tasks = load_tasks(self.root)
        self.columns: dict[str, np.ndarray] = {}
        self._png_columns: dict[str, list[pa.Array]] = {k: [] for k in self.camera_keys
                                                         if self.features[k]["dtype"] == "image"}
        self._load_data()
        self._validate_rows()
        self._stats: dict[str, stats_lib.Stats] | None = None
        self._cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._frame_cache = None

    # ------------------------------------------------------------------ loading
    def _load_data(self) -> None:
        numeric = fmt.numeric_keys(self.features)
        parts: dict[str, list[np.ndarray]] = {k: [] for k in numeric}
        seen: list[tuple[int, int]] = []
        for pair in self.episodes.data_files:
            if pair not in seen:
                seen.append(pair)
        self.data_paths = [fmt.data_file(self.root, self.info, c, f) for c, f in seen]
        for path in self.data_paths:
            table = read_parquet(path)
            undeclared = [c for c in table.column_names if c not in self.features]
            if undeclared:
                raise DatasetError(f"{path}: column {undeclared[0]!r} is not declared in meta/info.json features"
                                   f" (declare it there, or remove the column)")
            for key in numeric:
                shape = self.features[key]["shape"]
                values = column_to_numpy(table, key, path, shape)
                if self.features[key]["dtype"].startswith("float"):
                    self._check_finite(values, key, path, table)
                parts[key].append(values)
            for key in self._png_columns:
                if key not in table.column_names:
                    raise DatasetError(f"{path}: image column {key!r} declared in meta/info.json is missing")
                self._png_columns[key].append(table.column(key).combine_chunks().field("bytes"))
        for key, chunks in parts.items():
            array = np.concatenate(chunks) if chunks else np.zeros((0, *self.features[key]["shape"]))
            self.columns[key] = array.astype(self.features[key]["dtype"], copy=False)

    @staticmethod
    def _check_finite(values: np.ndarray, key: str, path: Path, table: pa.Table) -> None:
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            where = f"row {row}"
            if "episode_index" in table.column_names and "frame_index" in table.column_names:
                ep = table.column("episode_index")[row].as_py()
                fr = table.column("frame_index")[row].as_py()
                where = f"episode {ep}, frame {fr}"
            raise DatasetError(f"{path}: non-finite value (NaN/inf) in feature {key!r} at {where}"
                               f" ({int(bad.sum())} rows affected)")

    def _validate_rows(self) -> None:
        info_path = self.root / fmt.INFO_PATH
        n = len(self.columns["index"]) if "index" in self.columns else 0
        if n != self.info["total_frames"]:
            raise DatasetError(f"{info_path}: total_frames is {self.info['total_frames']} but the data files hold {n} rows")
        index = self.columns["index"].reshape(-1)
        if not np.array_equal(index, np.arange(n)):
            row = int(np.flatnonzero(index != np.arange(n))[0])
            raise DatasetError(f"{self.root / 'data'}: column 'index' is not 0..{n - 1} (first mismatch at row {row})")
        ep = self.episodes
        ep_col = self.columns["episode_index"].reshape(-1)
        frame_col = self.columns["frame_index"].reshape(-1)
        expected_from = np.concatenate([[0], np.cumsum(ep.length)[:-1]])
        if not (np.array_equal(ep.from_index, expected_from) and np.array_equal(ep.to_index - ep.from_index, ep.length)):
            bad = int(np.flatnonzero((ep.from_index != expected_from) | (ep.to_index - ep.from_index != ep.length))[0])
            raise DatasetError(f"{self.root / 'meta' / 'episodes'}: episode {bad} row range"
                               f" [{ep.from_index[bad]}, {ep.to_index[bad]}) does not follow its length {ep.length[bad]}")
        expected_ep = np.repeat(np.arange(len(ep)), ep.length)
        if len(expected_ep) != n or not np.array_equal(ep_col, expected_ep):
            row = int(np.flatnonzero(ep_col[: len(expected_ep)] != expected_ep[:n])[0]) if len(expected_ep) == n else 0
            raise DatasetError(f"{self.root / 'data'}: column 'episode_index' disagrees with meta/episodes at row {row}")
        expected_frame = np.arange(n) - np.repeat(ep.from_index, ep.length)
        if not np.array_equal(frame_col, expected_frame):
            row = int(np.flatnonzero(frame_col != expected_frame)[0])
            raise DatasetError(f"{self.root / 'data'}: column 'frame_index' does not count 0.. within episode"
                               f" {int(ep_col[row])} (row {row})")
        task_col = self.columns["task_index"].reshape(-1)
        if n and (task_col.min() < 0 or task_col.max() >= len(self.tasks)):
            raise DatasetError(f"{self.root / 'data'}: task_index {int(task_col.max())} has no entry in meta/tasks.parquet")
        for key in fmt.video_keys(self.features):
            for e in range(len(ep)):
                path = fmt.video_file(self.root, self.info, key, int(ep.video_chunk[key][e]), int(ep.video_file[key][e]))
                if not path.is_file():
                    raise DatasetError(f"missing video file: {path} (camera {key!r}, episode {e})")

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.info["total_frames"])

    @property
    def num_episodes(self) -> int:
        return len(self.episodes)

    @property
    def episode_of_row(self) -> np.ndarray:
        return self.columns["episode_index"].reshape(-1)

    def task_strings(self, rows: np.ndarray) -> list[str]:
        return [self.tasks[i] for i in self.columns["task_index"].reshape(-1)[rows]]

    @property
    def frame_cache(self):
        if self._frame_cache is None:
            from robopolicy.data.frame_cache import FrameCache

            self._frame_cache = FrameCache(self, self._cache_dir)
        return self._frame_cache

    def frames(self, key: str, rows: np.ndarray | Sequence[int]) -> np.ndarray:
        """uint8 (n, H, W, 3) frames of camera `key` at dataset rows `rows`."""
        return self.frame_cache.get(key)[np.asarray(rows)]

    def png_bytes(self, key: str) -> list[pa.Array]:
        """Raw PNG bytes of an image-stored camera, one array per data file (for the frame cache)."""
        return self._png_columns[key]

    def __getitem__(self, row: int) -> dict[str, Any]:
        """One frame as LeRobot returns it: float tensors, images (3, H, W) in [0, 1], and the task."""
        import torch

        row = int(row)
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} out of range for {len(self)} frames")
        item: dict[str, Any] = {}
        for key, values in self.columns.items():
            item[key] = torch.from_numpy(np.array(values[row]))
        for key in self.camera_keys:
            item[key] = torch.from_numpy(self.frames(key, [row])[0]).permute(2, 0, 1).float() / 255.0
        item["task"] = self.tasks[int(self.columns["task_index"][row].item())]
        return item

    # ------------------------------------------------------------------ stats
    @property
    def stats(self) -> dict[str, stats_lib.Stats]:
        if self._stats is None:
            path = self.root / fmt.STATS_PATH
            self._stats = load_stats(path, self.features) if path.is_file() else self.compute_stats()
        return self._stats

    def compute_stats(self) -> dict[str, stats_lib.Stats]:
        """Recompute stats from the data: exact for low-dim features, sampled frames for cameras."""
        out: dict[str, stats_lib.Stats] = {}
        for key, values in self.columns.items():
            out[key] = stats_lib.vector_stats(values.reshape(len(values), -1))
        for key in self.camera_keys:
            per_episode = []
            for e in range(self.num_episodes):
                start = int(self.episodes.from_index[e])
                rows = start + stats_lib.sample_frame_indices(int(self.episodes.length[e]))
                per_episode.append(stats_lib.image_stats(self.frames(key, rows)))
            out[key] = stats_lib.aggregate(per_episode)
        return out

    def __repr__(self) -> str:
        return (f"LeRobotDataset({str(self.root)!r}, episodes={self.num_episodes}, frames={len(self)},"
                f" fps={self.fps}, cameras={self.camera_keys})")


def load_stats(path: Path, features: dict) -> dict[str, stats_lib.Stats]:
    """meta/stats.json, checked: an object of per-feature objects of finite numbers whose min / max /
    mean / std fit the feature's shape; every error names the file and the feature."""
    data = fmt.load_json(path)
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: must be a JSON object of per-feature statistics")
    out = {}
    for key, entry in data.items():
        if not isinstance(entry, dict):
            raise DatasetError(f"{path}: statistics of {key!r} must be an object, got {type(entry).__name__}")
        try:
            stats = {k: np.asarray(v, dtype=np.float64) for k, v in entry.items()}
        except (TypeError, ValueError):
            raise DatasetError(f"{path}: statistics of {key!r} are not all numbers") from None
        spec = features.get(key)
        for name in ("min", "max", "mean", "std"):
            if name not in stats:
                continue
            if not np.isfinite(stats[name]).all():
                raise DatasetError(f"{path}: {key}.{name} contains NaN or inf")
            if spec is not None and spec["dtype"] not in fmt.VISUAL_DTYPES and stats[name].size != int(np.prod(spec["shape"])):
                raise DatasetError(f"{path}: {key}.{name} has {stats[name].size} values, the feature has shape"
                                   f" {spec['shape']}")
        out[key] = stats
    return out
