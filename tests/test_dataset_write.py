"""A dataset we write loads back exactly and looks, file for file, like what LeRobot writes."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import LIFT_VIDEO
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.writer import DatasetWriter
from robopolicy.errors import DatasetError

USER_FEATURES = ["observation.state", "observation.images.agentview", "observation.images.wrist",
                 "action", "observation.environment_state"]


def rewrite(src, dst, camera_dtype, episodes=None, codec="av1"):
    features = {k: dict(src.features[k]) for k in USER_FEATURES}
    for k in src.camera_keys:
        features[k]["dtype"] = camera_dtype
        features[k].pop("info", None)
    with DatasetWriter(dst, fps=src.fps, features=features, robot_type="panda", video_codec=codec) as w:
        for e in episodes if episodes is not None else range(src.num_episodes):
            for row in range(src.episodes.from_index[e], src.episodes.to_index[e]):
                frame = {k: src.columns[k][row] for k in ("observation.state", "action", "observation.environment_state")}
                for k in src.camera_keys:
                    frame[k] = src.frames(k, [row])[0]
                w.add_frame(frame, task=src.tasks[0])
            w.save_episode()
    return LeRobotDataset(dst)


@pytest.fixture(scope="module")
def source():
    return LeRobotDataset(LIFT_VIDEO)


@pytest.mark.parametrize("camera_dtype,max_err", [("video", 4.0), ("image", 0.0)])
def test_roundtrip_is_exact_for_low_dim_and_within_codec_error_for_images(source, tmp_path, camera_dtype, max_err):
    out = rewrite(source, tmp_path / "ds", camera_dtype, episodes=range(6))
    rows = np.arange(source.episodes.to_index[5])
    assert out.num_episodes == 6 and len(out) == len(rows)
    for key in ("observation.state", "action", "observation.environment_state"):
        assert np.array_equal(out.columns[key], source.columns[key][rows]), key
    for key in source.camera_keys:
        err = np.abs(out.frames(key, rows).astype(float) - source.frames(key, rows)).mean()
        assert err <= max_err, (key, err)
    assert out.tasks == source.tasks


def test_layout_and_metadata_keys_match_lerobot(source, tmp_path):
    out = rewrite(source, tmp_path / "ds", "video")
    ours = sorted(str(p.relative_to(out.root)) for p in out.root.rglob("*") if p.is_file())
    theirs = sorted(str(p.relative_to(LIFT_VIDEO)) for p in LIFT_VIDEO.rglob("*") if p.is_file())
    assert ours == theirs
    info_ours = json.loads((out.root / "meta/info.json").read_text())
    info_theirs = json.loads((LIFT_VIDEO / "meta/info.json").read_text())
    assert info_ours == info_theirs  # same episodes and frames, so the whole file must agree
    for rel in ("data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet", "meta/tasks.parquet"):
        a, b = pq.read_schema(out.root / rel), pq.read_schema(LIFT_VIDEO / rel)
        assert a.names == b.names, rel
        assert [f.type for f in a] == [f.type for f in b], rel
    stats_ours = json.loads((out.root / "meta/stats.json").read_text())
    stats_theirs = json.loads((LIFT_VIDEO / "meta/stats.json").read_text())
    assert set(stats_ours) == set(stats_theirs)
    for key in stats_theirs:
        assert set(stats_ours[key]) == set(stats_theirs[key]), key
        assert np.asarray(stats_ours[key]["mean"]).shape == np.asarray(stats_theirs[key]["mean"]).shape, key
    ep_ours = pq.read_table(out.root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    ep_theirs = pq.read_table(LIFT_VIDEO / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    for a, b in zip(ep_ours, ep_theirs):
        for col in ("episode_index", "length", "dataset_from_index", "dataset_to_index",
                    "videos/observation.images.agentview/from_timestamp", "tasks"):
            assert a[col] == pytest.approx(b[col]), col


def test_h264_and_multiple_files(source, tmp_path):
    features = {k: dict(source.features[k]) for k in ("observation.state", "action", "observation.images.wrist")}
    features["observation.images.wrist"].pop("info")
    w = DatasetWriter(tmp_path / "ds", fps=20, features=features, video_codec="h264",
                      data_files_size_in_mb=0, video_files_size_in_mb=0)  # force a new file per episode
    for e in range(3):
        for row in range(source.episodes.from_index[e], source.episodes.to_index[e]):
            w.add_frame({"observation.state": source.columns["observation.state"][row],
                         "action": source.columns["action"][row],
                         "observation.images.wrist": source.frames("observation.images.wrist", [row])[0]},
                        task=f"task {e % 2}")
        w.save_episode()
    w.finalize()
    out = LeRobotDataset(tmp_path / "ds")
    assert sorted(p.name for p in (tmp_path / "ds/data/chunk-000").iterdir()) == [
        "file-000.parquet", "file-001.parquet", "file-002.parquet"]
    assert out.features["observation.images.wrist"]["info"]["video.codec"] == "h264"
    assert out.tasks == ["task 0", "task 1"] and out.task_strings(np.array([0])) == ["task 0"]
    rows = np.arange(len(out))
    err = np.abs(out.frames("observation.images.wrist", rows).astype(float)
                 - source.frames("observation.images.wrist", rows)).mean()
    assert err < 6.0
    assert np.array_equal(out.columns["action"], source.columns["action"][rows])


def test_discarded_episode_leaves_no_trace(source, tmp_path):
    features = {k: dict(source.features[k]) for k in ("observation.state", "action")}
    with DatasetWriter(tmp_path / "ds", fps=20, features=features) as w:
        for i in range(5):
            w.add_frame({"observation.state": np.zeros(9), "action": np.ones(7)}, task="fail")
        w.discard_episode()
        for i in range(4):
            w.add_frame({"observation.state": np.full(9, i), "action": np.zeros(7)}, task="keep")
        w.save_episode()
    out = LeRobotDataset(tmp_path / "ds")
    assert len(out) == 4 and out.tasks == ["keep"]


def test_writer_rejects_bad_frames(source, tmp_path):
    features = {k: dict(source.features[k]) for k in ("observation.state", "action")}
    w = DatasetWriter(tmp_path / "ds", fps=20, features=features)
    with pytest.raises(DatasetError, match="'action' contains NaN"):
        w.add_frame({"observation.state": np.zeros(9), "action": np.array([np.nan] * 7)}, task="t")
    with pytest.raises(DatasetError, match="'observation.state' has 8 values"):
        w.add_frame({"observation.state": np.zeros(8), "action": np.zeros(7)}, task="t")
    with pytest.raises(DatasetError, match="missing features"):
        w.add_frame({"action": np.zeros(7)}, task="t")
    with pytest.raises(DatasetError, match="already exists"):
        DatasetWriter(LIFT_VIDEO, fps=20, features=features)
