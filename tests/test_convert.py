"""robomimic HDF5 -> LeRobot v3.0, through the library and the CLI."""

import subprocess
import sys

import h5py
import json
import numpy as np
import pytest

from robopolicy.data.convert import convert_robomimic
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.errors import DatasetError


def make_robomimic(path, n_demos=3, with_images=True):
    rng = np.random.default_rng(0)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        for i in range(n_demos):
            T = 10 + i
            g = data.create_group(f"demo_{i}")
            obs = g.create_group("obs")
            d = {"robot0_eef_pos": rng.normal(size=(T, 3)), "robot0_eef_quat": rng.normal(size=(T, 4)),
                 "robot0_gripper_qpos": rng.normal(size=(T, 2)), "object": rng.normal(size=(T, 10))}
            if with_images:
                d["agentview_image"] = rng.integers(0, 255, size=(T, 32, 32, 3), dtype=np.uint8)
            for k, v in d.items():
                obs.create_dataset(k, data=v.astype(np.float32) if v.dtype != np.uint8 else v)
            g.create_dataset("actions", data=rng.uniform(-1, 1, size=(T, 7)).astype(np.float32))
            g.attrs["num_samples"] = T
            demos[i] = (d, np.asarray(g["actions"]))
    return demos


def test_convert_preserves_values(tmp_path):
    src = tmp_path / "lift.hdf5"
    demos = make_robomimic(src)
    ds = LeRobotDataset(convert_robomimic(src, tmp_path / "out", camera_storage="image"))
    assert ds.num_episodes == 3 and len(ds) == 10 + 11 + 12
    assert ds.tasks == ["Lift"]
    assert ds.features["observation.state"]["shape"] == [9]
    assert ds.features["observation.state"]["names"][:3] == ["robot0_eef_pos_0", "robot0_eef_pos_1", "robot0_eef_pos_2"]
    for i, (obs, actions) in demos.items():
        rows = np.arange(ds.episodes.from_index[i], ds.episodes.to_index[i])
        state = np.concatenate([obs["robot0_eef_pos"], obs["robot0_eef_quat"], obs["robot0_gripper_qpos"]], axis=1)
        assert np.array_equal(ds.columns["observation.state"][rows], state.astype(np.float32))
        assert np.array_equal(ds.columns["observation.environment_state"][rows], obs["object"].astype(np.float32))
        assert np.array_equal(ds.columns["action"][rows], actions)
        assert np.array_equal(ds.frames("observation.images.agentview", rows), obs["agentview_image"])


def test_convert_cli_with_video(tmp_path):
    src = tmp_path / "lift.hdf5"
    make_robomimic(src, n_demos=2)
    result = subprocess.run([sys.executable, "-m", "robopolicy.cli", "dataset", "convert", str(src),
                             "--out", str(tmp_path / "out"), "--task", "lift the cube"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "2 episodes, 21 frames" in result.stdout
    ds = LeRobotDataset(tmp_path / "out")
    assert ds.features["observation.images.agentview"]["dtype"] == "video"
    assert ds.tasks == ["lift the cube"]


def test_convert_errors(tmp_path):
    with pytest.raises(DatasetError, match="robomimic file not found"):
        convert_robomimic(tmp_path / "none.hdf5", tmp_path / "out")
    src = tmp_path / "lift.hdf5"
    make_robomimic(src, n_demos=1, with_images=False)
    with pytest.raises(DatasetError, match=r"observation keys \['joint_pos'\] not found"):
        convert_robomimic(src, tmp_path / "out", state_keys=["joint_pos"])
