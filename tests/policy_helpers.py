"""A small policy on the LeRobot-written Lift fixture, shared by the policy, accelerator and encoder tests."""

import numpy as np
import pytest

from conftest import LIFT_VIDEO
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.policy.config import EncoderConfig, PolicyConfig, VisionConfig


@pytest.fixture(scope="module")
def dataset():
    return LeRobotDataset(LIFT_VIDEO)


def small_config(head, **kw):
    enc = EncoderConfig(dim=32, vision=VisionConfig(backbone="small_cnn", num_keypoints=8), **kw.pop("encoder", {}))
    cfg = PolicyConfig(head=head, encoder=enc, **kw)
    cfg.denoiser.unet_dims = [32, 64]
    cfg.act.dim, cfg.act.ff_dim, cfg.act.encoder_layers, cfg.act.vae_encoder_layers = 32, 64, 1, 1
    return cfg


def observation(ds, row, n_obs_steps):
    obs = {"observation.state": ds.columns["observation.state"][row - n_obs_steps + 1:row + 1]}
    for key in ds.camera_keys:
        obs[key] = ds.frames(key, np.arange(row - n_obs_steps + 1, row + 1))
    return obs
