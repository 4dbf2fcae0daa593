"""Reading the LeRobot-written fixtures must give exactly what the files hold."""

import io

import av
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import LIFT_IMAGES, LIFT_VIDEO
from robopolicy.data.dataset import LeRobotDataset


def parquet_column(root, name):
    table = pq.read_table(root / "data/chunk-000/file-000.parquet", columns=[name])
    return np.array(table.column(name).to_pylist(), dtype=np.float32)


@pytest.mark.parametrize("root,n_eps,n_frames", [(LIFT_VIDEO, 20, 1261), (LIFT_IMAGES, 4, 249)])
def test_metadata_and_low_dim_values_match_parquet(root, n_eps, n_frames):
    ds = LeRobotDataset(root)
    assert ds.num_episodes == n_eps and len(ds) == n_frames and ds.fps == 20
    assert ds.tasks == ["lift the red cube"]
    assert ds.camera_keys == ["observation.images.agentview", "observation.images.wrist"]
    for key in ("observation.state", "action", "observation.environment_state"):
        expected = parquet_column(root, key)
        assert ds.columns[key].dtype == np.float32
        assert np.array_equal(ds.columns[key], expected), key  # bit-exact
    assert ds.columns["observation.state"].shape == (n_frames, 9)
    assert ds.columns["action"].shape == (n_frames, 7)
    # episode ranges from meta/episodes agree with the per-row episode index
    for e in range(ds.num_episodes):
        rows = slice(ds.episodes.from_index[e], ds.episodes.to_index[e])
        assert (ds.episode_of_row[rows] == e).all()
        assert ds.columns["frame_index"][rows].reshape(-1).tolist() == list(range(ds.episodes.length[e]))


def independent_decode(path, start_s, count, fps):
    """Seek to an episode's start and decode `count` frames — a different path from the cache's full scan."""
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        c.seek(int(start_s / stream.time_base), stream=stream, backward=True, any_frame=False)
        frames = []
        for frame in c.decode(stream):
            t = float(frame.pts * stream.time_base)
            if t < start_s - 1e-6:
                continue
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return np.stack(frames)


@pytest.mark.parametrize("episode", [0, 7, 19])
def test_video_frames_match_independent_decode(episode):
    ds = LeRobotDataset(LIFT_VIDEO)
    for key in ds.camera_keys:
        start = ds.episodes.video_from_ts[key][episode]
        n = int(ds.episodes.length[episode])
        path = LIFT_VIDEO / f"videos/{key}/chunk-000/file-000.mp4"
        expected = independent_decode(path, start, n, ds.fps)
        rows = np.arange(ds.episodes.from_index[episode], ds.episodes.to_index[episode])
        got = ds.frames(key, rows)
        assert got.shape == (n, 84, 84, 3) and got.dtype == np.uint8
        assert np.array_equal(got, expected)


def test_image_frames_match_png_bytes():
    ds = LeRobotDataset(LIFT_IMAGES)
    table = pq.read_table(LIFT_IMAGES / "data/chunk-000/file-000.parquet", columns=["observation.images.wrist"])
    cells = table.column("observation.images.wrist").to_pylist()
    for row in (0, 100, 248):
        expected = np.asarray(Image.open(io.BytesIO(cells[row]["bytes"])).convert("RGB"))
        assert np.array_equal(ds.frames("observation.images.wrist", [row])[0], expected)


def test_getitem_returns_lerobot_style_sample():
    ds = LeRobotDataset(LIFT_VIDEO)
    item = ds[70]
    assert item["task"] == "lift the red cube"
    assert item["observation.images.agentview"].shape == (3, 84, 84)
    assert 0.0 <= float(item["observation.images.agentview"].min()) and float(item["observation.images.agentview"].max()) <= 1.0
    assert torch.equal(item["action"], torch.from_numpy(ds.columns["action"][70]))
    assert int(item["episode_index"]) == 1
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_stats_loaded_from_meta_and_recomputed():
    ds = LeRobotDataset(LIFT_VIDEO)
    stats = ds.stats
    assert np.allclose(stats["action"]["mean"], ds.columns["action"].mean(axis=0), atol=1e-6)
    fresh = ds.compute_stats()
    # rotation deltas are constant zero in the fixture: std 0, not NaN
    assert np.array_equal(fresh["action"]["std"][3:6], np.zeros(3))
    assert np.allclose(fresh["observation.state"]["std"], ds.columns["observation.state"].std(axis=0), atol=1e-6)
    assert fresh["observation.images.agentview"]["mean"].shape == (3, 1, 1)
    assert np.isfinite(fresh["observation.images.agentview"]["std"]).all()
