"""The decoded-frame cache: built once, reused, rebuilt when the source changes, never stale."""

import os

import numpy as np

from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.frame_cache import FrameCache
from robopolicy.data.video import VideoEncoder, decode_video

KEY = "observation.images.wrist"


def test_cache_is_built_once_and_reused(lift_copy, tmp_path):
    cache_dir = tmp_path / "cache"
    first = FrameCache(LeRobotDataset(lift_copy), cache_dir)
    frames = np.array(first.get(KEY))
    assert first.builds == 1
    second = FrameCache(LeRobotDataset(lift_copy), cache_dir)
    assert np.array_equal(second.get(KEY), frames)
    assert second.builds == 0  # served from disk, nothing decoded
    assert isinstance(second.get(KEY), np.memmap)


def test_cache_rebuilds_when_the_video_changes(lift_copy, tmp_path):
    cache_dir = tmp_path / "cache"
    ds = LeRobotDataset(lift_copy)
    before = np.array(FrameCache(ds, cache_dir).get(KEY))
    # Replace the video by an inverted copy (same frame count and timing).
    path = lift_copy / f"videos/{KEY}/chunk-000/file-000.mp4"
    frames, _ = decode_video(path)
    enc = VideoEncoder(path.with_suffix(".new.mp4"), fps=20, width=84, height=84)
    for f in frames:
        enc.write(255 - f)
    enc.close()
    os.replace(path.with_suffix(".new.mp4"), path)
    cache = FrameCache(LeRobotDataset(lift_copy), cache_dir)
    after = cache.get(KEY)
    assert cache.builds == 1
    assert np.abs(after.astype(float) - (255 - before.astype(float))).mean() < 4.0


def test_interrupted_build_leaves_no_valid_looking_cache(lift_copy, tmp_path):
    cache_dir = tmp_path / "cache"
    ds = LeRobotDataset(lift_copy)
    cache = FrameCache(ds, cache_dir)
    cache.get(KEY)
    (cache_dir / f"{KEY}.npy").write_bytes(b"garbage")  # a torn file from a killed process
    fresh = FrameCache(LeRobotDataset(lift_copy), cache_dir)
    assert fresh.get(KEY).shape == (len(ds), 84, 84, 3)
    assert fresh.builds == 1
