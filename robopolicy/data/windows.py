"""Temporal training windows: observation history and action chunks, never crossing episodes.

For a dataset row t and a feature with offsets (deltas) d, the window holds rows t + d. Offsets
that fall outside t's episode are clamped to the episode's first/last frame and flagged in
`<feature>_is_pad` (LeRobot's convention, so `action_is_pad` masks the loss on padded steps).

Batches are gathered with vectorized indexing into the dataset's arrays and the frame-cache
memmaps, which is what makes sampling fast without worker processes. The order of batches is a
pure function of (seed, step), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from robopolicy.errors import DatasetError


@dataclass(frozen=True)
class WindowSpec:
    """Which frames each training sample holds.

    n_obs_steps=2 and horizon=16 with action_offset=-1 give the diffusion-policy layout:
    observations at t-1, t and actions t-1 .. t+14.
    """

    n_obs_steps: int = 2
    horizon: int = 16
    action_offset: int = -1  # first action offset; 0 for ACT-style chunks starting at t

    def __post_init__(self):
        if self.n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {self.n_obs_steps}")
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")

    @property
    def observation_deltas(self) -> list[int]:
        return list(range(1 - self.n_obs_steps, 1))

    @property
    def action_deltas(self) -> list[int]:
        return list(range(self.action_offset, self.action_offset + self.horizon))

    def deltas(self, observation_keys: Sequence[str], action_key: str = "action") -> dict[str, list[int]]:
        out = {k: self.observation_deltas for k in observation_keys}
        out[action_key] = self.action_deltas
        return out


def deltas_from_timestamps(delta_timestamps: Mapping[str, Sequence[float]], fps: int) -> dict[str, list[int]]:
    """LeRobot's `delta_timestamps` (seconds) to frame offsets; they must sit on the frame grid."""
    out = {}
    for key, seconds in delta_timestamps.items():
        frames = np.asarray(seconds, dtype=np.float64) * fps
        if not np.allclose(frames, np.round(frames), atol=1e-4):
            raise DatasetError(f"delta_timestamps[{key!r}] = {list(seconds)} are not multiples of 1/fps = {1 / fps:.4f}s")
        out[key] = np.round(frames).astype(int).tolist()
    return out


class WindowedDataset(torch.utils.data.Dataset):
    """Windows over a `LeRobotDataset`; `get_batch(rows)` is the fast path, `[i]` the torch one."""

    def __init__(self, dataset, deltas: Mapping[str, Sequence[int]], episodes: Sequence[int] | None = None):
        self.dataset = dataset
        known = set(dataset.columns) | set(dataset.camera_keys)
        for key in deltas:
            if key not in known:
                raise DatasetError(f"window feature {key!r} is not in dataset {dataset.root}; it has {sorted(known)}")
        self.deltas = {k: np.asarray(v, dtype=np.int64) for k, v in deltas.items()}
        ep = dataset.episodes
        if episodes is None:
            episodes = range(len(ep))
        episodes = list(episodes)
        for e in episodes:
            if not 0 <= e < len(ep):
                raise DatasetError(f"episode {e} does not exist in {dataset.root} ({len(ep)} episodes)")
        self.episodes = episodes
        self.rows = (np.concatenate([np.arange(ep.from_index[e], ep.to_index[e]) for e in episodes])
                     if episodes else np.zeros(0, dtype=np.int64))
        self._row_episode = dataset.episode_of_row
        self._first = ep.from_index
        self._last = ep.to_index - 1

    def __len__(self) -> int:
        return len(self.rows)

    def window_rows(self, rows: np.ndarray, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(clamped row indices (B, T), is_pad (B, T)) of feature `key` around each row."""
        e = self._row_episode[rows]
        lo, hi = self._first[e][:, None], self._last[e][:, None]
        wanted = rows[:, None] + self.deltas[key][None, :]
        return np.clip(wanted, lo, hi), (wanted < lo) | (wanted > hi)

    def get_batch(self, rows: np.ndarray | Sequence[int]) -> dict:
        rows = np.asarray(rows, dtype=np.int64)
        ds = self.dataset
        batch: dict = {}
        for key in self.deltas:
            idx, pad = self.window_rows(rows, key)
            if key in ds.camera_keys:
                frames = ds.frames(key, idx.reshape(-1))  # (B*T, H, W, 3) uint8
                frames = torch.from_numpy(np.ascontiguousarray(frames)).view(*idx.shape, *frames.shape[1:])
                batch[key] = frames.permute(0, 1, 4, 2, 3).float().div_(255.0)
            else:
                batch[key] = torch.from_numpy(ds.columns[key][idx].astype(np.float32, copy=False))
            batch[f"{key}_is_pad"] = torch.from_numpy(pad)
        batch["index"] = torch.from_numpy(rows)
        batch["task"] = ds.task_strings(rows)
        return batch

    def __getitem__(self, i: int) -> dict:
        batch = self.get_batch([self.rows[i]])
        return {k: (v[0] if k != "task" else v[0]) for k, v in batch.items()}


class BatchLoader:
    """Shuffled batches from a `WindowedDataset`, addressable by global step.

    Each epoch is a permutation seeded by (seed, epoch); with `world_size > 1` every rank takes
    its own slice of that permutation, so ranks never see the same sample in a step.

    `prefetch > 0` gathers the next batches in a background thread. That pays off when the model
    runs on a GPU; on a CPU the thread competes with the training math for the same cores (it
    measured 2.4x slower on 2 cores), so the default is 0 and the trainer turns it on for CUDA.
    """

    def __init__(self, windows: WindowedDataset, batch_size: int, seed: int = 0, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, prefetch: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        per_epoch = len(windows) // (batch_size * world_size)
        if per_epoch == 0:
            raise DatasetError(f"{len(windows)} samples are fewer than one batch of {batch_size} x {world_size} ranks")
        self.windows = windows
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.prefetch = prefetch
        self.batches_per_epoch = per_epoch

    def rows_for_step(self, step: int) -> np.ndarray:
        epoch, b = divmod(step, self.batches_per_epoch)
        n = len(self.windows)
        order = np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
        start = (b * self.world_size + self.rank) * self.batch_size
        return self.windows.rows[order[start:start + self.batch_size]]

    def batch(self, step: int) -> dict:
        return self.windows.get_batch(self.rows_for_step(step))

    def iterate(self, start_step: int = 0, num_steps: int | None = None) -> Iterator[dict]:
        """Batches for steps start_step, start_step+1, ... (forever if num_steps is None)."""
        stop = None if num_steps is None else start_step + num_steps
        if self.prefetch <= 0:
            step = start_step
            while stop is None or step < stop:
                yield self.batch(step)
                step += 1
            return
        yield from _prefetched(self.batch, start_step, stop, self.prefetch)


def _prefetched(make, start: int, stop: int | None, depth: int) -> Iterator[dict]:
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = threading.Event()

    def worker():
        step = start
        try:
            while not done.is_set() and (stop is None or step < stop):
                item = make(step)
                while not done.is_set():
                    try:
                        q.put(("ok", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += 1
        except BaseException as err:  # surface loader errors in the consumer
            q.put(("error", err))
            return
        q.put(("end", None))

    thread = threading.Thread(target=worker, daemon=True, name="robopolicy-batch-prefetch")
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "ok":
                yield item
            elif kind == "error":
                raise item
            else:
                return
    finally:
        done.set()
