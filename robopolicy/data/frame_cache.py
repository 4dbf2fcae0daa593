"""Decode camera frames once into uint8 memory maps, so training never waits on a video decoder.

One `.npy` file per camera holds every frame of the dataset in row order, (N, H, W, 3) uint8. A
JSON manifest beside it records the sources it was built from (path, size, mtime of each video
or parquet file, plus the episode spans); when any of them changes the cache is rebuilt. Builds go
to a temporary file that is renamed into place, so an interrupted build never leaves a cache that
looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from robopolicy.data import format as fmt
from robopolicy.data.video import decode_png, iter_video_frames
from robopolicy.errors import DatasetError

TIME_TOLERANCE_S = 1e-4  # the same tolerance LeRobot uses to match timestamps to video frames


def default_cache_dir(root: Path) -> Path:
    """~/.cache/robopolicy/frames/<digest of the dataset path> (or $ROBOPOLICY_CACHE_DIR/<digest>).

    Kept outside the dataset folder so shared or read-only datasets stay untouched and a
    dataset pushed to a hub never carries its cache along.
    """
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    base = Path(os.environ.get("ROBOPOLICY_CACHE_DIR") or Path.home() / ".cache" / "robopolicy" / "frames")
    return base / digest


class FrameCache:
    """Per-camera uint8 memmaps of a `LeRobotDataset`, built on first use."""

    def __init__(self, dataset, cache_dir: Path | None = None):
        self.dataset = dataset
        self.dir = Path(cache_dir) if cache_dir is not None else default_cache_dir(dataset.root)
        self._arrays: dict[str, np.ndarray] = {}
        self.builds = 0  # how many cameras were (re)decoded by this object; tests and benchmarks read it

    def get(self, key: str) -> np.ndarray:
        if key not in self._arrays:
            if key not in self.dataset.camera_keys:
                raise KeyError(f"{key!r} is not a camera of this dataset; cameras: {self.dataset.camera_keys}")
            self._arrays[key] = self._load_or_build(key)
        return self._arrays[key]

    def warm(self) -> None:
        for key in self.dataset.camera_keys:
            self.get(key)

    # ------------------------------------------------------------------ internals
    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.npy", self.dir / f"{key}.json"

    def _fingerprint(self, key: str) -> dict:
        ds = self.dataset
        if ds.features[key]["dtype"] == "video":
            ep = ds.episodes
            sources = sorted({fmt.video_file(ds.root, ds.info, key, int(c), int(f))
                              for c, f in zip(ep.video_chunk[key], ep.video_file[key])})
            spans = ep.video_from_ts[key].round(6).tolist()
        else:
            sources, spans = list(ds.data_paths), []
        files = []
        for p in sources:
            st = p.stat()
            files.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        h, w, c = fmt.image_hwc(ds.features[key])
        return {"version": 1, "key": key, "frames": len(ds), "shape": [h, w, c],
                "files": files, "spans": spans, "lengths": ds.episodes.length.tolist()}

    def _load_or_build(self, key: str) -> np.ndarray:
        data_path, manifest_path = self._paths(key)
        fingerprint = self._fingerprint(key)
        if data_path.is_file() and manifest_path.is_file():
            try:
                if json.loads(manifest_path.read_text()) == fingerprint:
                    array = np.load(data_path, mmap_mode="r")
                    if array.shape == (len(self.dataset), *fingerprint["shape"]):
                        return array
            except (ValueError, OSError, json.JSONDecodeError):
                pass  # unreadable cache: rebuild below
        self._build(key, data_path, manifest_path, fingerprint)
        return np.load(data_path, mmap_mode="r")

    def _build(self, key: str, data_path: Path, manifest_path: Path, fingerprint: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = data_path.with_name(f"{data_path.name}.{os.getpid()}.tmp")
        shape = (len(self.dataset), *fingerprint["shape"])
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        try:
            if self.dataset.features[key]["dtype"] == "video":
                self._fill_from_video(key, out)
            else:
                self._fill_from_png(key, out)
            out.flush()
            del out
            os.replace(tmp, data_path)
        finally:
            if tmp.exists():
                tmp.unlink()
        tmp_manifest = manifest_path.with_name(f"{manifest_path.name}.{os.getpid()}.tmp")
        tmp_manifest.write_text(json.dumps(fingerprint))
        os.replace(tmp_manifest, manifest_path)
        self.builds += 1

    def _fill_from_video(self, key: str, out: np.ndarray) -> None:
        """Stream each video file once and drop every frame into the rows that show it."""
        ds = self.dataset
        ep = ds.episodes
        timestamps = ds.columns["timestamp"].reshape(-1).astype(np.float64)
        by_file: dict[tuple[int, int], list[int]] = {}
        for e in range(len(ep)):
            by_file.setdefault((int(ep.video_chunk[key][e]), int(ep.video_file[key][e])), []).append(e)
        expected_hw = tuple(fingerprint_hw(ds.features[key]))
        for (chunk, file), episodes in by_file.items():
            path = fmt.video_file(ds.root, ds.info, key, chunk, file)
            rows = np.concatenate([np.arange(ep.from_index[e], ep.to_index[e]) for e in episodes])
            query = np.concatenate([ep.video_from_ts[key][e] + timestamps[ep.from_index[e]:ep.to_index[e]]
                                    for e in episodes])
            order = np.argsort(query, kind="stable")
            query, rows = query[order], rows[order]
            j = 0
            for t, frame in iter_video_frames(path):
                if frame.shape[:2] != expected_hw:
                    raise DatasetError(f"{path}: frames are {frame.shape[1]}x{frame.shape[0]},"
                                       f" meta/info.json declares {expected_hw[1]}x{expected_hw[0]} for {key!r}")
                if j < len(query) and query[j] < t - TIME_TOLERANCE_S:
                    break  # a wanted timestamp fell between frames: report below
                while j < len(query) and abs(query[j] - t) <= TIME_TOLERANCE_S:
                    out[rows[j]] = frame
                    j += 1
                if j == len(query):
                    break
            if j < len(query):
                row = int(rows[j])
                e = int(ds.episode_of_row[row])
                raise DatasetError(f"{path}: no video frame at t={query[j]:.4f}s needed by episode {e},"
                                   f" frame {row - int(ep.from_index[e])} (video truncated or timestamps wrong)")

    def _fill_from_png(self, key: str, out: np.ndarray) -> None:

        row = 0
        for path, array in zip(self.dataset.data_paths, self.dataset.png_bytes(key)):
            for i in range(len(array)):
                data = array[i].as_py()
                if data is None:
                    raise DatasetError(f"{path}: image {key!r} at row {row} has no bytes")
                image = decode_png(data, f"{path} column {key!r} row {i}")
                if image.shape != out.shape[1:]:
                    raise DatasetError(f"{path}: image {key!r} at row {i} is {image.shape},"
                                       f" meta/info.json declares {out.shape[1:]}")
                out[row] = image
                row += 1


def fingerprint_hw(spec: dict) -> tuple[int, int]:
    h, w, _ = fmt.image_hwc(spec)
    return h, w
