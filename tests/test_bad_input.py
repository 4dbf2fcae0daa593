"""Malformed datasets fail loudly: one line naming the file and field, never a wrong sample."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.inspect import verify
from robopolicy.errors import DatasetError

DATA = "data/chunk-000/file-000.parquet"
EPISODES = "meta/episodes/chunk-000/file-000.parquet"


def cli(*args):
    return subprocess.run([sys.executable, "-m", "robopolicy.cli", *args], capture_output=True, text=True)


def replace_column(path, name, values):
    table = pq.read_table(path)
    i = table.column_names.index(name)
    table = table.set_column(i, table.schema.field(i), values)
    pq.write_table(table, path)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetError, match="dataset folder not found"):
        LeRobotDataset(tmp_path / "nope")
    result = cli("dataset", "info", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "dataset folder not found" in result.stderr


def test_old_codebase_version_says_how_to_convert(lift_copy):
    info = json.loads((lift_copy / "meta/info.json").read_text())
    info["codebase_version"] = "v2.1"
    (lift_copy / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"codebase_version is 'v2.1'.*convert_dataset_v21_to_v30"):
        LeRobotDataset(lift_copy)


def test_missing_and_truncated_parquet(lift_copy):
    path = lift_copy / DATA
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"cannot read parquet file .*file-000.parquet"):
        LeRobotDataset(lift_copy)
    path.unlink()
    with pytest.raises(DatasetError, match="missing parquet file"):
        LeRobotDataset(lift_copy)


def test_truncated_video_is_reported_with_file_and_episode(lift_copy):
    path = lift_copy / "videos/observation.images.agentview/chunk-000/file-000.mp4"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    ds = LeRobotDataset(lift_copy)  # metadata is fine; the pixels are not
    with pytest.raises(DatasetError, match=r"file-000.mp4"):
        ds.frames("observation.images.agentview", [1200])
    problems = verify(lift_copy)
    assert any("observation.images.agentview" in p and "file-000.mp4" in p for p in problems)
    result = cli("dataset", "verify", str(lift_copy))
    assert result.returncode == 1 and "problem:" in result.stderr


def test_missing_video_file(lift_copy):
    (lift_copy / "videos/observation.images.wrist/chunk-000/file-000.mp4").unlink()
    with pytest.raises(DatasetError, match=r"missing video file: .*observation.images.wrist"):
        LeRobotDataset(lift_copy)


def test_nan_in_actions_names_file_episode_and_frame(lift_copy):
    path = lift_copy / DATA
    actions = pq.read_table(path).column("action").to_pylist()
    actions[130][2] = float("nan")  # episode 2 starts at row 127
    replace_column(path, "action", pa.array(actions, type=pa.list_(pa.float32(), 7)))
    with pytest.raises(DatasetError, match=r"file-000.parquet: non-finite value \(NaN/inf\) in feature 'action' at episode 2, frame 3"):
        LeRobotDataset(lift_copy)


def test_feature_shape_mismatch(lift_copy):
    info = json.loads((lift_copy / "meta/info.json").read_text())
    info["features"]["observation.state"]["shape"] = [8]
    (lift_copy / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"feature shape mismatch in column 'observation.state'.*\[8\]"):
        LeRobotDataset(lift_copy)


def test_episode_index_gap(lift_copy):
    path = lift_copy / EPISODES
    table = pq.read_table(path)
    ep = np.array(table.column("episode_index").to_pylist())
    ep[5:] += 1  # episode 5 missing
    replace_column(path, "episode_index", pa.array(ep, type=pa.int64()))
    with pytest.raises(DatasetError, match="episode index gap: episode 5 is missing"):
        LeRobotDataset(lift_copy)


def test_rows_disagreeing_with_episode_table(lift_copy):
    path = lift_copy / DATA
    ep = np.array(pq.read_table(path).column("episode_index").to_pylist())
    ep[70] = 0
    replace_column(path, "episode_index", pa.array(ep, type=pa.int64()))
    with pytest.raises(DatasetError, match="'episode_index' disagrees with meta/episodes at row 70"):
        LeRobotDataset(lift_copy)


def test_verify_accepts_the_fixtures_and_flags_missing_stats(lift_images_copy):
    assert verify(lift_images_copy) == []
    (lift_images_copy / "meta/stats.json").unlink()
    problems = verify(lift_images_copy)
    assert len(problems) == 1 and "stats.json" in problems[0]
    assert cli("dataset", "stats", str(lift_images_copy), "--write").returncode == 0
    assert verify(lift_images_copy) == []
