"""Policy objects: every head predicts chunks in robot units, saves, loads, and refuses bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from policy_helpers import dataset, observation, small_config  # noqa: F401,F811  (dataset: a fixture)
from robopolicy.errors import CheckpointError, ObservationError
from robopolicy.policy.policy import Policy
from robopolicy.data.windows import WindowedDataset, WindowSpec


@pytest.mark.parametrize("head", ["diffusion", "flow", "act"])
def test_predict_save_load_roundtrip(dataset, tmp_path, head):
    torch.manual_seed(0)
    policy = Policy.from_dataset(small_config(head), dataset)
    windows = WindowedDataset(dataset, WindowSpec(2, 16, policy.config.first_action_offset).deltas(policy.observation_keys))
    losses = policy(windows.get_batch([5, 50, 500]))
    assert torch.isfinite(losses["loss"]) and losses["loss"].requires_grad
    obs = observation(dataset, 100, 2)
    chunk = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    expected_len = 16 + policy.config.first_action_offset
    assert chunk.shape == (expected_len, 7) and chunk.dtype == np.float32
    # untrained but normalized: actions land near the data's range, in robot units
    assert np.abs(chunk).max() < 10
    policy.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors", "stats.json"]
    loaded = Policy.load(tmp_path / "ckpt")
    again = loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(chunk, again)
    # single-frame observations are repeated over the history
    single = {k: v[-1] for k, v in obs.items()}
    assert loaded.predict_chunk(single).shape == chunk.shape


def test_eval_can_sample_a_diffusion_checkpoint_with_the_other_timestep_spacing(dataset, tmp_path):
    """`robopolicy eval --timestep-spacing` samples the same weights as a checkpoint trained with that spacing
    would, and refuses a head it does not apply to, naming the checkpoint."""
    from robopolicy.errors import ConfigError
    from robopolicy.evaluate.config import EvalConfig
    from robopolicy.evaluate.evaluator import load_policy

    torch.manual_seed(0)
    trailing = Policy.from_dataset(small_config("diffusion"), dataset)
    trailing.config.diffusion.timestep_spacing = "trailing"
    trailing.save(tmp_path / "trailing")
    trailing.config.diffusion.timestep_spacing = "leading"
    trailing.save(tmp_path / "leading")  # the same weights, configured leading from the start
    obs = observation(dataset, 100, 2)
    sample = lambda policy: policy.predict_chunk(obs, steps=4, generator=torch.Generator().manual_seed(3))
    as_trailing = sample(Policy.load(tmp_path / "trailing"))
    resampled = load_policy(tmp_path / "trailing", EvalConfig(timestep_spacing="leading"))
    assert resampled.head._sampler(4).timesteps.tolist() == [75, 50, 25, 0]
    assert np.array_equal(sample(resampled), sample(Policy.load(tmp_path / "leading")))
    assert not np.array_equal(sample(resampled), as_trailing)
    resampled.save(tmp_path / "resaved")  # a saved copy keeps sampling the chosen way
    assert Policy.load(tmp_path / "resaved").config.diffusion.timestep_spacing == "leading"

    Policy.from_dataset(small_config("flow"), dataset).save(tmp_path / "flow")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'flow'}: timestep_spacing=leading.*head is flow"):
        load_policy(tmp_path / "flow", EvalConfig(timestep_spacing="leading"))
    with pytest.raises(ConfigError, match="timestep_spacing with compose"):
        load_policy(tmp_path / "leading", EvalConfig(timestep_spacing="leading", compose=[str(tmp_path / "trailing")]))


def test_rotation_dims_with_zero_std_come_back_exactly_zero(dataset):
    policy = Policy.from_dataset(small_config("flow"), dataset)
    chunk = policy.predict_chunk(observation(dataset, 40, 2))
    assert np.all(chunk[:, 3:6] == 0.0)  # constant in the data -> constant in the output, no NaN

@pytest.mark.parametrize("head", ["diffusion", "flow"])
def test_prefix_fixes_committed_actions(dataset, head):
    policy = Policy.from_dataset(small_config(head), dataset)
    prefix = dataset.columns["action"][100:104]
    chunk = policy.predict_chunk(observation(dataset, 100, 2), prefix=prefix)
    assert np.allclose(chunk[:4], prefix, atol=1e-5)
    free = policy.predict_chunk(observation(dataset, 100, 2))
    assert not np.allclose(free[:4], prefix, atol=1e-3)

@pytest.mark.parametrize("head", ["diffusion", "flow"])
def test_a_row_samples_the_same_chunk_whatever_it_is_batched_with(dataset, head):
    """Batched evaluation gives each episode its own generator: row i of a batch sampled with a list
    of generators is the chunk a call for that observation alone draws from generator i."""
    torch.manual_seed(0)
    policy = Policy.from_dataset(small_config(head), dataset).eval()
    observations = [observation(dataset, frame, 2) for frame in (100, 200, 300)]
    generators = lambda: [torch.Generator().manual_seed(seed) for seed in (7, 8, 9)]  # noqa: E731
    batched = policy.sample_actions(policy.observation_batches(observations), generator=generators()).numpy()
    alone = np.stack([policy.predict_chunk(o, generator=g) for o, g in zip(observations, generators())])
    np.testing.assert_allclose(batched, alone, atol=1e-4)
    shared = policy.sample_actions(policy.observation_batches(observations),
                                   generator=torch.Generator().manual_seed(7)).numpy()
    assert not np.allclose(shared[1:], alone[1:], atol=1e-2)  # one generator for the batch draws other noise


def test_bad_observations_are_rejected(dataset):
    policy = Policy.from_dataset(small_config("diffusion"), dataset)
    obs = observation(dataset, 100, 2)
    with pytest.raises(ObservationError, match="missing 'observation.images.wrist'"):
        policy.predict_chunk({k: v for k, v in obs.items() if k != "observation.images.wrist"})
    with pytest.raises(ObservationError, match=r"'observation.state' has shape \(8,\)"):
        policy.predict_chunk({**obs, "observation.state": np.zeros(8)})
    with pytest.raises(ObservationError, match="camera 'observation.images.agentview' has shape"):
        policy.predict_chunk({**obs, "observation.images.agentview": np.zeros((64, 64, 3), np.uint8)})
    with pytest.raises(ObservationError, match="NaN"):
        policy.predict_chunk({**obs, "observation.state": np.full(9, np.nan)})

def test_mismatched_checkpoints_fail_clearly(dataset, tmp_path):
    policy = Policy.from_dataset(small_config("diffusion"), dataset)
    policy.save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        Policy.load(tmp_path / "missing")
    config = json.loads((tmp_path / "ckpt/config.json").read_text())
    config["spec"]["config"]["denoiser"]["unet_dims"] = [32, 128]
    (tmp_path / "ckpt/config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"parameter '.*' has shape \[.*\] in the file but \[.*\] in the model"):
        Policy.load(tmp_path / "ckpt")
    policy.save(tmp_path / "ckpt")
    weights = load_file(str(tmp_path / "ckpt/model.safetensors"))
    weights.pop(next(iter(weights)))
    save_file(weights, str(tmp_path / "ckpt/model.safetensors"))
    with pytest.raises(CheckpointError, match="is missing"):
        Policy.load(tmp_path / "ckpt")
    (tmp_path / "ckpt/model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        Policy.load(tmp_path / "ckpt")

def test_denoisers_give_the_same_output_with_conditioning_prepared_once():
    from robopolicy.policy.config import DenoiserConfig
    from robopolicy.policy.encoders.base import Conditioning
    from robopolicy.policy.heads.transformer import TransformerDenoiser
    from robopolicy.policy.heads.unet import UNet1D

    cond = Conditioning(torch.randn(2, 6, 32), torch.randn(2, 192))
    x, t = torch.randn(2, 16, 7), torch.tensor([5.0, 80.0])
    for net in (UNet1D(DenoiserConfig(unet_dims=[32, 64]), 7, 16, 192),
                TransformerDenoiser(DenoiserConfig(transformer_dim=32, transformer_layers=2), 7, 16, 32)):
        net.eval()
        assert torch.allclose(net(x, t, cond), net(x, t, cond, prepared=net.prepare(cond)), atol=1e-5)
