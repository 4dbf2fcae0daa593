"""`robopolicy dataset filter | delete-episodes | split | merge`: new LeRobot v3.0 datasets, sources untouched."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import LIFT_VIDEO
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.edit import check_mergeable, select_episodes, split_episodes, write_episodes
from robopolicy.errors import DatasetError
from robopolicy.sim.collect import collect


def cli(cwd, *args):
    return subprocess.run([sys.executable, "-m", "robopolicy.cli", "dataset", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit") / "toy"
    collect("test/reach", 6, root, workers=1, progress=False)
    return root


def rows_of(ds, e):
    return np.arange(ds.episodes.from_index[e], ds.episodes.to_index[e])


def assert_same_episode(a, ea, b, eb):
    for key in ("observation.state", "observation.environment_state", "action"):
        np.testing.assert_array_equal(a.columns[key][rows_of(a, ea)], b.columns[key][rows_of(b, eb)])
    assert a.task_strings(rows_of(a, ea)) == b.task_strings(rows_of(b, eb))


def test_filter_keeps_the_chosen_episodes_renumbered_with_fresh_stats(toy, tmp_path):
    before = sorted(p.name for p in toy.rglob("*"))
    result = cli(tmp_path, "filter", str(toy), "--episodes", "1,3-4", "--out", "kept")
    assert result.returncode == 0, result.stderr
    src, kept = LeRobotDataset(toy), LeRobotDataset(tmp_path / "kept")
    assert kept.num_episodes == 3
    for new, old in enumerate([1, 3, 4]):
        assert_same_episode(kept, new, src, old)
    assert kept.columns["episode_index"].reshape(-1).tolist() == sum(([i] * len(rows_of(kept, i)) for i in range(3)), [])
    actions = np.concatenate([src.columns["action"][rows_of(src, e)] for e in (1, 3, 4)])
    np.testing.assert_allclose(kept.stats["action"]["min"], actions.min(0))
    np.testing.assert_allclose(kept.stats["action"]["max"], actions.max(0))
    assert sorted(p.name for p in toy.rglob("*")) == before  # the source is untouched
    assert cli(tmp_path, "verify", "kept").returncode == 0
    # rules combine: length bounds pick the same episodes as computing them by hand
    lengths, middle = src.episodes.length, int(np.median(src.episodes.length))
    assert select_episodes(src, min_length=middle) == [e for e in range(6) if lengths[e] >= middle]
    assert select_episodes(src, episodes="0-3", max_length=middle) == [e for e in range(4) if lengths[e] <= middle]


def test_delete_in_place_swaps_the_folder_atomically(toy, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(toy, copy)
    result = cli(tmp_path, "delete-episodes", str(copy), "--episodes", "0,5", "--in-place")
    assert result.returncode == 0, result.stderr
    src, edited = LeRobotDataset(toy), LeRobotDataset(copy)
    assert edited.num_episodes == 4
    for new, old in enumerate([1, 2, 3, 4]):
        assert_same_episode(edited, new, src, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # no partial or old folder left behind


def test_split_is_a_seeded_partition(toy, tmp_path):
    assert split_episodes(10, [0.7, 0.3], seed=1) == split_episodes(10, [0.7, 0.3], seed=1)
    train, val = split_episodes(10, [0.7, 0.3], seed=1)
    assert len(train) == 7 and len(val) == 3 and sorted(train + val) == list(range(10))
    result = cli(tmp_path, "split", str(toy), "--out", "parts", "--fractions", "0.5,0.5", "--names", "a,b")
    assert result.returncode == 0, result.stderr
    a, b, src = LeRobotDataset(tmp_path / "parts/a"), LeRobotDataset(tmp_path / "parts/b"), LeRobotDataset(toy)
    assert a.num_episodes + b.num_episodes == 6
    states = {tuple(src.columns["observation.environment_state"][rows_of(src, e)][0]) for e in range(6)}
    got = {tuple(d.columns["observation.environment_state"][rows_of(d, e)][0])
           for d in (a, b) for e in range(d.num_episodes)}
    assert got == states  # every episode once


def test_merge_appends_every_episode_and_keeps_source_tags(toy, tmp_path):
    ds = LeRobotDataset(toy)
    from robopolicy.data.writer import DatasetWriter

    # a dataset of one correction episode (as DAgger writes them)
    corr = tmp_path / "corr"
    with DatasetWriter(corr, fps=ds.fps, features=ds.features, robot_type=ds.info.get("robot_type")) as writer:
        for row in rows_of(ds, 0):
            writer.add_frame({k: ds.columns[k][row] for k in writer.user_keys}, task=ds.task_strings([row])[0])
        writer.save_episode(source="correction")
    result = cli(tmp_path, "merge", str(toy), str(corr), "--out", "merged")
    assert result.returncode == 0, result.stderr
    merged = LeRobotDataset(tmp_path / "merged")
    assert merged.num_episodes == 7
    assert merged.episodes.sources[-1] == "correction" and merged.episodes.sources[0] != "correction"
    assert_same_episode(merged, 6, ds, 0)
    assert_same_episode(merged, 3, ds, 3)


def test_merge_says_which_features_differ(toy, tmp_path):
    with pytest.raises(DatasetError, match="cannot merge .*no feature 'observation.images.agentview'"):
        check_mergeable([LeRobotDataset(LIFT_VIDEO), LeRobotDataset(toy)])
    odd = tmp_path / "odd"
    shutil.copytree(toy, odd)
    info = json.loads((odd / "meta/info.json").read_text())
    info["robot_type"] = "another_arm"
    (odd / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="robot_type 'another_arm'"):
        check_mergeable([LeRobotDataset(toy), LeRobotDataset(odd)])
    result = cli(tmp_path, "merge", str(toy), str(odd), "--out", "m")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("args, words", [
    (["filter", "{toy}", "--episodes", "2,9", "--out", "x"], ["--episodes", "[9]"]),
    (["filter", "{toy}", "--episodes", "two", "--out", "x"], ["--episodes", "'two'"]),
    (["filter", "{toy}", "--episodes", "1", "--out", "x", "--in-place"], ["--out", "--in-place"]),
    (["filter", "{toy}", "--task", "no such task", "--out", "x"], ["no episodes left"]),
    (["delete-episodes", "{toy}", "--episodes", "0-5", "--out", "x"], ["no episodes left"]),
    (["split", "{toy}", "--out", "x", "--fractions", "0.5,0.4"], ["sum to 1"]),
    (["split", "{toy}", "--out", "x", "--fractions", "0.5,0.5", "--names", "a"], ["--names"]),
    (["merge", "{toy}", "no/such/dataset", "--out", "x"], ["no/such/dataset"]),
])
def test_bad_edits_are_one_line_and_write_nothing(toy, tmp_path, args, words):
    result = cli(tmp_path, *[a.format(toy=toy) for a in args])
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_video_datasets_are_edited_frame_for_frame(tmp_path):
    src = LeRobotDataset(LIFT_VIDEO)
    out = write_episodes([(src, [2, 7])], tmp_path / "two")
    ds = LeRobotDataset(out)
    assert ds.num_episodes == 2 and ds.camera_keys == src.camera_keys
    for new, old in enumerate([2, 7]):
        for key in src.camera_keys:
            a = ds.frames(key, rows_of(ds, new)).astype(np.float32)
            b = src.frames(key, rows_of(src, old)).astype(np.float32)
            assert a.shape == b.shape and np.abs(a - b).mean() < 3.0  # re-encoded: lossy, but the same images
        np.testing.assert_array_equal(ds.columns["action"][rows_of(ds, new)], src.columns["action"][rows_of(src, old)])
