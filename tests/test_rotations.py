"""Quaternion state features read as continuous rotations: a flipped sign changes nothing."""

import numpy as np
import pytest
import torch

from conftest import LIFT_VIDEO
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.errors import ConfigError
from robopolicy.policy.config import EncoderConfig, PolicyConfig
from robopolicy.policy.policy import Policy
from robopolicy.policy.rotations import quaternion_to_6d, rewrite
from robopolicy.sim.robosuite_experts import quat_to_matrix


def test_six_numbers_are_the_rotation_matrix_columns_and_ignore_the_sign():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(20, 4))
    six = quaternion_to_6d(torch.as_tensor(q)).numpy()
    for quat, row in zip(q, six):
        m = quat_to_matrix(quat)
        np.testing.assert_allclose(row, np.concatenate([m[:, 0], m[:, 1]]), atol=1e-9)
    np.testing.assert_allclose(quaternion_to_6d(torch.as_tensor(-q)).numpy(), six, atol=1e-12)


def test_rewrite_keeps_the_other_numbers_in_order():
    x = torch.arange(14, dtype=torch.float64)[None]
    out = rewrite(x, [10, 3])
    assert out.shape == (1, 18)
    assert out[0, :3].tolist() == [0, 1, 2] and out[0, 9:12].tolist() == [7, 8, 9]


@pytest.fixture(scope="module")
def dataset():
    return LeRobotDataset(LIFT_VIDEO)


def config(**quaternions):
    cfg = PolicyConfig(head="flow", encoder=EncoderConfig(dim=32, cameras=[], state_keys=[
        "observation.state", "observation.environment_state"]), quaternions=quaternions)
    cfg.denoiser.unet_dims = [32, 64]
    return cfg


def test_a_policy_reading_rotations_gives_the_same_chunk_for_either_quaternion_sign(dataset, tmp_path):
    torch.manual_seed(0)
    policy = Policy.from_dataset(config(**{"observation.state": [3], "observation.environment_state": [3]}), dataset)
    assert policy.normalizer.dims["observation.state"] == 11
    assert policy.normalizer.dims["observation.environment_state"] == 12
    row = 60
    obs = {k: dataset.columns[k][row - 1:row + 1].copy() for k in ("observation.state", "observation.environment_state")}
    flipped = {k: v.copy() for k, v in obs.items()}
    flipped["observation.state"][:, 3:7] *= -1
    flipped["observation.environment_state"][:, 3:7] *= -1
    chunk = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(1))
    again = policy.predict_chunk(flipped, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(chunk, again, atol=1e-5)
    # a raw-quaternion policy does see the flip
    raw = Policy.from_dataset(config(), dataset)
    a = raw.predict_chunk(obs, generator=torch.Generator().manual_seed(1))
    b = raw.predict_chunk(flipped, generator=torch.Generator().manual_seed(1))
    assert np.abs(a - b).max() > 1e-4
    # the statistics are those of the rewritten feature, and survive a save / load
    policy.save(tmp_path / "ckpt")
    loaded = Policy.load(tmp_path / "ckpt")
    assert len(loaded.stats["observation.state"]["min"]) == 11
    np.testing.assert_array_equal(loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(1)), chunk)


@pytest.mark.parametrize("quaternions, message", [
    ({"action": [0]}, "not one of the state keys"),
    ({"observation.state": [7]}, "does not fit"),
    ({"observation.environment_state": [0, 2]}, "overlap"),
])
def test_misplaced_quaternions_are_config_errors(dataset, quaternions, message):
    with pytest.raises(ConfigError, match=message):
        Policy.from_dataset(config(**quaternions), dataset)
