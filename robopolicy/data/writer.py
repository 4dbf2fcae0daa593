"""Write LeRobotDataset v3.0 folders: the same files, columns and metadata keys LeRobot writes.

Usage (what `robopolicy collect` and deployment recording do):

    with DatasetWriter(root, fps=20, features=features, robot_type="panda") as writer:
        for step in episode:
            writer.add_frame({"observation.state": s, "observation.images.agentview": img, "action": a},
                             task="lift the red cube")
        writer.save_episode()          # or writer.discard_episode() for a failed attempt
    # leaving the block calls finalize(): episode table, tasks, stats and info.json

Frames of one episode are buffered until `save_episode`, so a discarded attempt costs nothing on
disk. Low-dim data goes to parquet (a row group per episode); cameras go either to mp4 (several
episodes per file, AV1 like LeRobot, or H.264) or to PNG bytes inside the parquet.

`durable=True` (what `robopolicy collect` uses) makes every saved episode survive a kill -9: each
episode gets its own parquet and mp4 files, closed before `save_episode` returns, and a line in
`meta/episodes.journal.jsonl` (flushed to disk) with everything `finalize` needs. A folder with a
journal and no meta/info.json is an interrupted write; `DatasetWriter(root, ..., resume=True)`
picks it up after its last saved episode (files of an episode that was being written are
removed), and `finalize` turns it into an ordinary dataset and drops the journal.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robopolicy.data import format as fmt
from robopolicy.data import stats as stats_lib
from robopolicy.data.video import VideoEncoder, encode_png, probe_video
from robopolicy.errors import DatasetError

_ARROW_TYPES = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(),
                "int32": pa.int32(), "bool": pa.bool_()}


def _is_vector(spec: dict) -> bool:
    return list(spec["shape"]) != [1]


def arrow_schema(features: Mapping[str, dict]) -> pa.Schema:
    """Parquet schema of the frame table, with the `huggingface` metadata LeRobot's loader reads."""
    fields, hf = [], {}
    for key, spec in features.items():
        dtype = spec["dtype"]
        if dtype == "video":
            continue
        if dtype == "image":
            fields.append(pa.field(key, pa.struct([("bytes", pa.binary()), ("path", pa.string())])))
            hf[key] = {"_type": "Image"}
        elif _is_vector(spec):
            fields.append(pa.field(key, pa.list_(_ARROW_TYPES[dtype], int(np.prod(spec["shape"])))))
            hf[key] = {"feature": {"dtype": dtype, "_type": "Value"}, "length": int(np.prod(spec["shape"])),
                       "_type": "List"}
        else:
            fields.append(pa.field(key, _ARROW_TYPES[dtype]))
            hf[key] = {"dtype": dtype, "_type": "Value"}
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": hf}})})


def validate_features(features: Mapping[str, dict]) -> dict[str, dict]:
    """User features plus LeRobot's bookkeeping columns, checked for supported dtypes and shapes."""
    out: dict[str, dict] = {}
    for key, spec in features.items():
        if key in fmt.DEFAULT_FEATURES:
            continue
        spec = dict(spec)
        dtype = spec.get("dtype")
        shape = spec.get("shape")
        if dtype in fmt.VISUAL_DTYPES:
            if shape is None or len(shape) != 3 or shape[2] != 3:
                raise DatasetError(f"feature {key!r}: camera shape must be [height, width, 3], got {shape}")
            spec.setdefault("names", ["height", "width", "channels"])
        elif dtype in _ARROW_TYPES:
            if shape is None or len(shape) != 1:
                raise DatasetError(f"feature {key!r}: numeric features must be 1-D, got shape {shape}")
            spec.setdefault("names", None)
        else:
            raise DatasetError(f"feature {key!r}: unsupported dtype {dtype!r}")
        spec["shape"] = list(shape)
        out[key] = {"dtype": dtype, "shape": spec["shape"], "names": spec["names"]}
    out.update({k: dict(v) for k, v in fmt.DEFAULT_FEATURES.items()})
    return out


class DatasetWriter:
    """Creates a new dataset folder and fills it episode by episode."""

    def __init__(self, root: str | Path, fps: int, features: Mapping[str, dict], robot_type: str | None = None,
                 video_codec: str = "av1", overwrite: bool = False, chunks_size: int = fmt.DEFAULT_CHUNKS_SIZE,
                 data_files_size_in_mb: int = fmt.DEFAULT_DATA_FILE_SIZE_MB,
                 video_files_size_in_mb: int = fmt.DEFAULT_VIDEO_FILE_SIZE_MB, durable: bool = False,
                 resume: bool = False):
        self.root = Path(root)
        journal = self.root / fmt.JOURNAL_PATH
        resuming = resume and journal.is_file() and not (self.root / fmt.INFO_PATH).is_file()
        if resume and not resuming and self.root.exists() and any(self.root.iterdir()):
            raise DatasetError(f"{self.root}: nothing to resume (no {fmt.JOURNAL_PATH} of an interrupted write,"
                               f" or the dataset is already complete)")
        if not resuming and self.root.exists() and any(self.root.iterdir()):
            if not overwrite:
                if journal.is_file() and not (self.root / fmt.INFO_PATH).is_file():
                    raise DatasetError(f"output folder {self.root} holds an interrupted write: --resume continues it,"
                                       f" --overwrite starts over")
                raise DatasetError(f"output folder {self.root} already exists and is not empty (--overwrite replaces it)")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fps = int(fps)
        self.features = validate_features(features)
        self.robot_type = robot_type
        self.video_codec = video_codec
        self.chunks_size = chunks_size
        self.data_file_limit = data_files_size_in_mb * 1024 * 1024
        self.video_file_limit = video_files_size_in_mb * 1024 * 1024
        self.user_keys = [k for k in self.features if k not in fmt.DEFAULT_FEATURES]
        self.video_keys = fmt.video_keys(self.features)
        self.image_keys = [k for k in self.user_keys if self.features[k]["dtype"] == "image"]
        self.schema = arrow_schema(self.features)
        self.tasks: list[str] = []
        self.episodes: list[dict[str, Any]] = []
        self.episode_stats: list[dict[str, stats_lib.Stats]] = []
        self.total_frames = 0
        self._buffer: list[tuple[dict[str, np.ndarray], str]] = []
        self._data_pos = (0, 0)
        self._data_writer: pq.ParquetWriter | None = None
        self._video_pos = {k: (0, 0) for k in self.video_keys}
        self._encoders: dict[str, VideoEncoder] = {}
        self._finalized = False
        self._tagged = False  # write the `source` column only for datasets that use it
        self.durable = durable or resuming
        self.journal_extra: dict[str, Any] = {}  # caller's bookkeeping for the next journal line
        self.resumed_extras: list[dict] = []  # ... and the lines read back on resume
        if resuming:
            self._resume(journal)

    # ------------------------------------------------------------------ frames
    def add_frame(self, frame: Mapping[str, Any], task: str) -> None:
        """Buffer one time step. Every user feature must be present, with its declared shape."""
        if self._finalized:
            raise DatasetError(f"dataset {self.root} is finalized; no more frames can be added")
        missing = [k for k in self.user_keys if k not in frame]
        extra = [k for k in frame if k not in self.features]
        if missing or extra:
            raise DatasetError(f"frame {len(self._buffer)}: missing features {missing}, unknown features {extra}")
        clean: dict[str, np.ndarray] = {}
        for key in self.user_keys:
            spec = self.features[key]
            value = np.asarray(frame[key])
            if spec["dtype"] in fmt.VISUAL_DTYPES:
                if value.shape != tuple(spec["shape"]):
                    raise DatasetError(f"frame {len(self._buffer)}: camera {key!r} has shape {value.shape},"
                                       f" declared {tuple(spec['shape'])} (height, width, 3)")
                if value.dtype != np.uint8:
                    if np.issubdtype(value.dtype, np.floating) and value.max(initial=0) <= 1.0:
                        value = (value * 255.0).round()
                    value = np.clip(value, 0, 255).astype(np.uint8)
            else:
                value = value.reshape(-1)
                if value.shape != (spec["shape"][0],):
                    raise DatasetError(f"frame {len(self._buffer)}: feature {key!r} has {value.size} values,"
                                       f" declared shape {spec['shape']}")
                value = value.astype(spec["dtype"])
                if value.dtype.kind == "f" and not np.isfinite(value).all():
                    raise DatasetError(f"frame {len(self._buffer)}: feature {key!r} contains NaN or inf: {value.tolist()}")
            clean[key] = value
        if not isinstance(task, str) or not task:
            raise DatasetError(f"frame {len(self._buffer)}: task must be a non-empty string")
        self._buffer.append((clean, task))

    @property
    def episode_buffer_length(self) -> int:
        return len(self._buffer)

    def discard_episode(self) -> None:
        self._buffer.clear()

    # ------------------------------------------------------------------ episodes
    def save_episode(self, source: str | None = None) -> int:
        """Write the buffered frames as the next episode; returns its episode index.

        `source` tags where the episode came from (e.g. "correction" for expert labels of a
        policy's own rollout, "dart" for noise-injected demonstrations); it is kept in the episode
        table's `source` column, "demonstration" when not given.
        """
        if not self._buffer:
            raise DatasetError("save_episode called with no frames added")
        episode_index = len(self.episodes)
        length = len(self._buffer)
        start = self.total_frames
        task_indices = []
        for _, task in self._buffer:
            if task not in self.tasks:
                self.tasks.append(task)
            task_indices.append(self.tasks.index(task))
        episode_tasks = list(dict.fromkeys(task for _, task in self._buffer))

        columns: dict[str, np.ndarray] = {k: np.stack([f[k] for f, _ in self._buffer]) for k in self.user_keys}
        frame_index = np.arange(length, dtype=np.int64)
        columns["timestamp"] = (frame_index / self.fps).astype(np.float32)
        columns["frame_index"] = frame_index
        columns["episode_index"] = np.full(length, episode_index, dtype=np.int64)
        columns["index"] = np.arange(start, start + length, dtype=np.int64)
        columns["task_index"] = np.asarray(task_indices, dtype=np.int64)

        record: dict[str, Any] = {"episode_index": episode_index, "tasks": episode_tasks, "length": length,
                                  "source": source or fmt.DEFAULT_SOURCE}
        if source is not None:
            self._tagged = True
        record["data/chunk_index"], record["data/file_index"] = self._write_rows(columns)
        record["dataset_from_index"] = start
        record["dataset_to_index"] = start + length
        for key in self.video_keys:
            chunk, file, from_ts = self._write_video(key, columns[key])
            record[f"videos/{key}/chunk_index"] = chunk
            record[f"videos/{key}/file_index"] = file
            record[f"videos/{key}/from_timestamp"] = from_ts
            record[f"videos/{key}/to_timestamp"] = from_ts + length / self.fps

        ep_stats: dict[str, stats_lib.Stats] = {}
        for key, spec in self.features.items():
            values = columns[key]
            if spec["dtype"] in fmt.VISUAL_DTYPES:
                ep_stats[key] = stats_lib.image_stats(values[stats_lib.sample_frame_indices(length)])
            else:
                s = stats_lib.vector_stats(values.reshape(length, -1))
                if spec["dtype"].startswith("int"):
                    s["min"], s["max"] = s["min"].astype(np.int64), s["max"].astype(np.int64)
                ep_stats[key] = s
        self.episode_stats.append(ep_stats)
        self.episodes.append(record)
        self.total_frames += length
        self._buffer.clear()
        if self.durable:
            self._journal(record, ep_stats)
        return episode_index

    # ------------------------------------------------------------------ durability
    def _journal(self, record: dict, ep_stats: dict) -> None:
        """The episode's files are closed; now say so, on disk, before returning."""
        line = {"record": record, "stats": stats_lib.to_json(ep_stats), "tasks": self.tasks,
                "tagged": self._tagged, "extra": dict(self.journal_extra), "writer": self.settings()}
        path = self.root / fmt.JOURNAL_PATH
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def settings(self) -> dict[str, Any]:
        """The constructor arguments that shape the files: what `finalize_interrupted` reopens with."""
        mb = 1024 * 1024
        return {"fps": self.fps, "features": self.features, "robot_type": self.robot_type,
                "video_codec": self.video_codec, "chunks_size": self.chunks_size,
                "data_files_size_in_mb": self.data_file_limit // mb, "video_files_size_in_mb": self.video_file_limit // mb}

    def _resume(self, journal: Path) -> None:
        lines = []
        for text in journal.read_text().splitlines():
            try:
                lines.append(json.loads(text))
            except json.JSONDecodeError:
                break  # a line cut by the kill: its episode's files may be incomplete; redo it
        for line in lines:
            self.episodes.append(line["record"])
            self.episode_stats.append(stats_lib.from_json(line["stats"]))
            self.tasks = list(line["tasks"])
            self._tagged = self._tagged or line["tagged"]
            self.resumed_extras.append(line["extra"])
            self.total_frames += line["record"]["length"]
        journal.write_text("".join(json.dumps(line) + "\n" for line in lines))
        if self.episodes:
            last = self.episodes[-1]
            self._data_pos = fmt.next_chunk_file(last["data/chunk_index"], last["data/file_index"], self.chunks_size)
            for key in self.video_keys:
                self._video_pos[key] = fmt.next_chunk_file(last[f"videos/{key}/chunk_index"],
                                                           last[f"videos/{key}/file_index"], self.chunks_size)
        self._remove_unjournaled_files()

    def _remove_unjournaled_files(self) -> None:
        """Files no journaled episode points at were being written when the process died."""
        kept = {self.root / fmt.DATA_PATH.format(chunk_index=r["data/chunk_index"], file_index=r["data/file_index"])
                for r in self.episodes}
        for key in self.video_keys:
            kept |= {self.root / fmt.VIDEO_PATH.format(video_key=key, chunk_index=r[f"videos/{key}/chunk_index"],
                                                       file_index=r[f"videos/{key}/file_index"]) for r in self.episodes}
        for folder in (self.root / "data", self.root / "videos"):
            for path in folder.rglob("*") if folder.is_dir() else ():
                if path.is_file() and path not in kept:
                    path.unlink()

    def _write_rows(self, columns: dict[str, np.ndarray]) -> tuple[int, int]:
        position = self._write_rows_to_file(columns)
        if self.durable:  # each episode in its own, closed, file
            self._data_writer.close()
            self._data_writer = None
            self._data_pos = fmt.next_chunk_file(*self._data_pos, self.chunks_size)
        return position

    def _write_rows_to_file(self, columns: dict[str, np.ndarray]) -> tuple[int, int]:
        if self._data_writer is not None and self._data_path().stat().st_size >= self.data_file_limit:
            self._data_writer.close()
            self._data_writer = None
            self._data_pos = fmt.next_chunk_file(*self._data_pos, self.chunks_size)
        if self._data_writer is None:
            path = self._data_path()
            path.parent.mkdir(parents=True, exist_ok=True)
            self._data_writer = pq.ParquetWriter(path, self.schema)
        arrays = []
        for field in self.schema:
            key = field.name
            if key in self.image_keys:
                arrays.append(pa.array([{"bytes": encode_png(img), "path": f"frame-{i:06d}.png"}
                                        for i, img in enumerate(columns[key])], type=field.type))
            elif pa.types.is_fixed_size_list(field.type):
                flat = pa.array(columns[key].reshape(-1), type=field.type.value_type)
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, field.type.list_size))
            else:
                arrays.append(pa.array(columns[key].reshape(-1), type=field.type))
        self._data_writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        return self._data_pos

    def _data_path(self) -> Path:
        return self.root / fmt.DATA_PATH.format(chunk_index=self._data_pos[0], file_index=self._data_pos[1])

    def _write_video(self, key: str, frames: np.ndarray) -> tuple[int, int, float]:
        encoder = self._encoders.get(key)
        if encoder is not None and encoder.size_bytes >= self.video_file_limit:
            encoder.close()
            encoder = None
            self._video_pos[key] = fmt.next_chunk_file(*self._video_pos[key], self.chunks_size)
        if encoder is None:
            chunk, file = self._video_pos[key]
            path = self.root / fmt.VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            h, w, _ = self.features[key]["shape"]
            encoder = VideoEncoder(path, self.fps, width=w, height=h, codec=self.video_codec)
            self._encoders[key] = encoder
        from_ts = encoder.frames_written / self.fps
        for frame in frames:
            encoder.write(frame)
        position = (*self._video_pos[key], from_ts)
        if self.durable:
            encoder.close()
            del self._encoders[key]
            self._video_pos[key] = fmt.next_chunk_file(*self._video_pos[key], self.chunks_size)
        return position

    # ------------------------------------------------------------------ metadata
    def finalize(self) -> None:
        """Close open files and write meta/: episodes, tasks, stats, info. Safe to call twice."""
        if self._finalized:
            return
        self._finalized = True
        if self._buffer:
            self._buffer.clear()  # an episode that was never saved is not part of the dataset
        if self._data_writer is not None:
            self._data_writer.close()
        for encoder in self._encoders.values():
            encoder.close()
        if not self.episodes:
            raise DatasetError(f"dataset {self.root} has no saved episodes; nothing to finalize")
        self._write_episodes_table()
        self._write_tasks()
        stats = {k: stats_lib.aggregate([s[k] for s in self.episode_stats]) for k in self.features}
        for key, spec in self.features.items():
            if spec["dtype"].startswith("int"):
                stats[key]["min"] = stats[key]["min"].astype(np.int64)
                stats[key]["max"] = stats[key]["max"].astype(np.int64)
        fmt.write_json_atomic(self.root / fmt.STATS_PATH, stats_lib.to_json(stats))
        fmt.write_json_atomic(self.root / fmt.INFO_PATH, self._info())
        (self.root / fmt.JOURNAL_PATH).unlink(missing_ok=True)  # info.json written: the dataset is complete

    def _info(self) -> dict:
        features = json.loads(json.dumps(self.features))
        for key in self.video_keys:
            path = self.root / fmt.VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            features[key]["info"] = probe_video(path)
        return {
            "codebase_version": fmt.CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": len(self.episodes),
            "total_frames": self.total_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.chunks_size,
            "data_files_size_in_mb": self.data_file_limit // (1024 * 1024),
            "video_files_size_in_mb": self.video_file_limit // (1024 * 1024),
            "fps": self.fps,
            "splits": {"train": f"0:{len(self.episodes)}"},
            "data_path": fmt.DATA_PATH,
            "video_path": fmt.VIDEO_PATH if self.video_keys else None,
            "features": features,
        }

    def _write_episodes_table(self) -> None:
        rows = []
        for record, ep_stats in zip(self.episodes, self.episode_stats):
            row = dict(record)
            if not self._tagged:
                row.pop("source")
            for key in self.features:
                for stat in stats_lib.STAT_KEYS:
                    row[f"stats/{key}/{stat}"] = np.asarray(ep_stats[key][stat]).tolist()
            row["meta/episodes/chunk_index"] = 0
            row["meta/episodes/file_index"] = 0
            rows.append(row)
        fields = [pa.field("episode_index", pa.int64()), pa.field("tasks", pa.list_(pa.string())),
                  pa.field("length", pa.int64()), pa.field("data/chunk_index", pa.int64()),
                  pa.field("data/file_index", pa.int64()), pa.field("dataset_from_index", pa.int64()),
                  pa.field("dataset_to_index", pa.int64())]
        for key in self.video_keys:
            fields += [pa.field(f"videos/{key}/chunk_index", pa.int64()), pa.field(f"videos/{key}/file_index", pa.int64()),
                       pa.field(f"videos/{key}/from_timestamp", pa.float64()),
                       pa.field(f"videos/{key}/to_timestamp", pa.float64())]
        for key, spec in self.features.items():
            visual = spec["dtype"] in fmt.VISUAL_DTYPES
            value_type = pa.list_(pa.list_(pa.list_(pa.float64()))) if visual else pa.list_(pa.float64())
            int_type = pa.list_(pa.int64())
            for stat in stats_lib.STAT_KEYS:
                is_int = stat == "count" or (stat in ("min", "max") and spec["dtype"].startswith("int"))
                fields.append(pa.field(f"stats/{key}/{stat}", int_type if is_int else value_type))
        fields += [pa.field("meta/episodes/chunk_index", pa.int64()), pa.field("meta/episodes/file_index", pa.int64())]
        if self._tagged:
            fields.append(pa.field("source", pa.string()))
        schema = pa.schema(fields)
        table = pa.Table.from_pylist(rows, schema=schema)
        path = self.root / fmt.EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)

    def _write_tasks(self) -> None:
        pandas_meta = {
            "index_columns": ["__index_level_0__"],
            "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                                "metadata": {"encoding": "UTF-8"}}],
            "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                         "numpy_type": "int64", "metadata": None},
                        {"name": None, "field_name": "__index_level_0__", "pandas_type": "unicode",
                         "numpy_type": "object", "metadata": None}],
            "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__},
        }
        schema = pa.schema([("task_index", pa.int64()), ("__index_level_0__", pa.large_string())],
                           metadata={"pandas": json.dumps(pandas_meta)})
        table = pa.table({"task_index": list(range(len(self.tasks))), "__index_level_0__": self.tasks}, schema=schema)
        pq.write_table(table, self.root / fmt.TASKS_PATH)

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or self.episodes:
            self.finalize()  # keep every episode saved before an error or Ctrl-C
        else:
            if self._data_writer is not None:
                self._data_writer.close()
            for encoder in self._encoders.values():
                encoder.close()


def finalize_interrupted(root: str | Path) -> int:
    """Turn an interrupted durable write (a `collect` or `deploy --record` killed with kill -9) into
    an ordinary dataset of the episodes it saved; returns how many. The episode that was being
    written when the process died is not among them."""
    root = Path(root)
    journal = root / fmt.JOURNAL_PATH
    if (root / fmt.INFO_PATH).is_file() or not journal.is_file():
        raise DatasetError(f"{root}: not an interrupted write (no {fmt.JOURNAL_PATH}, or meta/info.json is already there)")
    settings = journaled_settings(root)
    if not settings:
        raise DatasetError(f"{journal}: no complete episode was saved before the interruption; nothing to keep")
    writer = DatasetWriter(root, resume=True, **settings)
    writer.finalize()
    return len(writer.episodes)


def journaled_settings(root: str | Path) -> dict | None:
    """The writer settings journaled with the first saved episode of an interrupted write (what
    `DatasetWriter(root, resume=True, **settings)` reopens it with); None when no episode was
    saved (no journal, or its first line was cut by the kill)."""
    try:
        first = (Path(root) / fmt.JOURNAL_PATH).read_text().partition("\n")[0]
        return json.loads(first).get("writer") or None
    except (OSError, ValueError, AttributeError):
        return None
