"""Camera encoders: the backbones a config can name, and FiLM conditioning on the instruction."""

import numpy as np
import pytest
import torch

from policy_helpers import dataset, observation, small_config  # noqa: F401,F811  (dataset: a fixture)
from robopolicy.errors import ConfigError
from robopolicy.policy.config import EncoderConfig
from robopolicy.policy.policy import Policy


def training_batch(policy, dataset):
    """16 training windows of `dataset` shaped as `policy` reads them."""
    from robopolicy.data.windows import WindowedDataset, WindowSpec

    pc = policy.config
    spec = WindowSpec(n_obs_steps=pc.n_obs_steps, horizon=pc.horizon, action_offset=pc.first_action_offset)
    return WindowedDataset(dataset, spec.deltas(policy.training_keys)).get_batch(list(range(0, 64, 4)))


def assert_trains_saves_and_acts(policy, dataset, tmp_path, batch=None):
    """30 Adam steps on one batch (`batch`, or `training_batch`'s) cut its loss by 30%; the saved
    policy predicts the same chunk once loaded. Returns the loaded policy."""
    batch = training_batch(policy, dataset) if batch is None else batch
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-3)
    first = float(policy(batch)["loss"].detach())
    for _ in range(30):
        optimizer.zero_grad()
        policy(batch)["loss"].backward()
        optimizer.step()
    assert float(policy(batch)["loss"].detach()) < 0.7 * first
    policy.eval()
    obs = observation(dataset, 100, policy.config.n_obs_steps)
    chunk = policy.predict_chunk(obs)
    policy.save(tmp_path / "ckpt")
    loaded = Policy.load(tmp_path / "ckpt")
    np.testing.assert_allclose(loaded.predict_chunk(obs), chunk, atol=1e-6)
    return loaded


def test_cameras_conditioned_on_the_instruction_see_it(dataset):
    """vision.language_film: what the keypoints report depends on the instruction, and it trains."""
    import dataclasses

    from robopolicy.policy.encoders.observation import ObservationEncoder

    with pytest.raises(ConfigError, match="language_film .* needs encoder.language: true"):
        from robopolicy.structs import from_dict
        from_dict(EncoderConfig, {"vision": {"language_film": True}}, "policy.encoder")
    torch.manual_seed(0)
    policy = Policy.from_dataset(small_config("flow", encoder={"language": True}), dataset)
    policy.config.encoder.vision.language_film = True
    tasks = ["put the red cube in the bowl", "put the blue cube in the bowl"]
    spec = dataclasses.replace(policy.spec, tasks=tasks)
    encoder = ObservationEncoder(spec).eval()
    camera = encoder.vision.camera_encoders()[0]
    batch = policy.normalizer.normalize_batch(policy.observation_batch(observation(dataset, 100, 2)))

    def camera_tokens(task):
        with torch.no_grad():
            return encoder({**batch, "task": [task]}).tokens[:, [0, 1, 3, 4]]  # per step: 2 cameras, the state

    # the scale/shift map starts at zero: the encoder begins as the unconditioned one
    assert torch.equal(camera_tokens(tasks[0]), camera_tokens(tasks[1]))
    torch.nn.init.normal_(camera.film.map.weight, std=0.1)
    red, blue = camera_tokens(tasks[0]), camera_tokens(tasks[1])
    assert (red - blue).abs().max() > 1e-3  # what the cameras report depends on what is asked
    encoder.train()
    encoder({**batch, "task": tasks[:1]}).tokens.sum().backward()
    assert camera.film.map.weight.grad.abs().sum() > 0  # and it trains


def test_keypoint_projection_conditioned_on_the_instruction(dataset):
    """vision.keypoint_language_film: the instruction also FiLMs the keypoints' projection; it starts as
    the plain projection, then what the camera token says depends on the instruction, and it trains."""
    import dataclasses

    from robopolicy.policy.encoders.observation import ObservationEncoder
    from robopolicy.structs import from_dict

    with pytest.raises(ConfigError, match="keypoint_language_film .* needs vision.language_film: true"):
        from_dict(EncoderConfig, {"language": True, "vision": {"keypoint_language_film": True}}, "policy.encoder")
    torch.manual_seed(0)
    policy = Policy.from_dataset(small_config("flow", encoder={"language": True}), dataset)
    policy.config.encoder.vision.language_film = True
    policy.config.encoder.vision.keypoint_language_film = True
    tasks = ["put the red cube in the bowl", "put the blue cube in the bowl"]
    encoder = ObservationEncoder(dataclasses.replace(policy.spec, tasks=tasks)).eval()
    camera = encoder.vision.camera_encoders()[0]
    batch = policy.normalizer.normalize_batch(policy.observation_batch(observation(dataset, 100, 2)))

    def camera_tokens(task):
        with torch.no_grad():
            return encoder({**batch, "task": [task]}).tokens[:, [0, 1, 3, 4]]

    assert torch.equal(camera_tokens(tasks[0]), camera_tokens(tasks[1]))  # both maps start at zero
    torch.nn.init.normal_(camera.project_film.weight, std=0.1)  # only the projection's FiLM
    assert (camera_tokens(tasks[0]) - camera_tokens(tasks[1])).abs().max() > 1e-3
    encoder.train()
    encoder({**batch, "task": tasks[:1]}).tokens.sum().backward()
    assert camera.project_film.weight.grad.abs().sum() > 0


def test_cameras_learn_to_predict_auxiliary_state_the_policy_never_reads(dataset, tmp_path):
    """encoder.auxiliary_state_keys: training batches carry the targets, the loss adds their regression
    from the camera tokens (which reaches the trunk and learns), and the saved policy acts from cameras
    and state alone."""
    from robopolicy.data.windows import WindowedDataset, WindowSpec
    from robopolicy.structs import from_dict

    with pytest.raises(ConfigError, match="also inputs"):
        from_dict(EncoderConfig, {"state_keys": ["observation.state"],
                                  "auxiliary_state_keys": ["observation.state"]}, "policy.encoder")
    with pytest.raises(ConfigError, match="auxiliary_weight"):
        from_dict(EncoderConfig, {"auxiliary_state_keys": ["observation.environment_state"],
                                  "auxiliary_weight": -1}, "policy.encoder")
    target = "observation.environment_state"
    with pytest.raises(ConfigError, match="reads no cameras"):
        Policy.from_dataset(small_config("flow", encoder={"cameras": [], "auxiliary_state_keys": [target]}), dataset)
    torch.manual_seed(0)
    policy = Policy.from_dataset(small_config("flow", encoder={"auxiliary_state_keys": [target]}), dataset)
    assert target not in policy.observation_keys and target in policy.training_keys
    pc = policy.config
    spec = WindowSpec(n_obs_steps=pc.n_obs_steps, horizon=pc.horizon, action_offset=pc.first_action_offset)
    windows = WindowedDataset(dataset, spec.deltas(policy.training_keys))
    batch = windows.get_batch(list(range(0, 64, 4)))
    assert batch[target].shape == (16, pc.n_obs_steps, 10)

    losses = policy(batch)
    assert losses["auxiliary"] > 0
    torch.manual_seed(1)
    plain = policy({k: v for k, v in batch.items() if k != target})  # scoring without targets: the head's loss
    assert "auxiliary" not in plain
    policy.config.encoder.auxiliary_weight = 0.0
    torch.manual_seed(1)
    assert torch.allclose(policy(batch)["loss"], plain["loss"])
    policy.config.encoder.auxiliary_weight = 1.0

    trunk = policy.encoder.vision.camera_encoders()[0].trunk[0].weight
    optimizer = torch.optim.Adam(policy.parameters(), lr=3e-3)
    first = float(policy(batch)["auxiliary"])
    for _ in range(40):
        optimizer.zero_grad()
        normalized = policy.normalizer.normalize_batch(batch)
        policy.encoder.auxiliary_loss(policy.encoder(normalized), normalized).backward()
        assert trunk.grad.abs().sum() > 0  # the cameras, not only the read-out, learn where things are
        optimizer.step()
    assert float(policy(batch)["auxiliary"]) < 0.5 * first

    policy.eval()
    policy.save(tmp_path / "ckpt")
    loaded = Policy.load(tmp_path / "ckpt")
    assert loaded.spec.keys("auxiliary") == [target]
    chunk = loaded.predict_chunk(observation(dataset, 100, pc.n_obs_steps))  # no target given
    assert chunk.shape[1] == 7 and torch.isfinite(torch.as_tensor(chunk)).all()


def test_feature_map_tokens_one_per_cell_each_from_its_own_cell(dataset, tmp_path):
    """vision.tokens: feature_map gives each camera feature_grid**2 tokens, a token reads only its
    own cell of the trunk's map, and an ACT policy built on them trains, saves and acts."""
    from robopolicy.policy.encoders.vision import FeatureMapTokens
    from robopolicy.structs import from_dict

    with pytest.raises(ConfigError, match="keypoint_language_film .* needs vision.tokens: keypoints"):
        from_dict(EncoderConfig, {"language": True, "vision": {"tokens": "feature_map", "language_film": True,
                                                                "keypoint_language_film": True}}, "policy.encoder")
    with pytest.raises(ConfigError, match="feature_grid"):
        from_dict(EncoderConfig, {"vision": {"tokens": "feature_map", "feature_grid": 0}}, "policy.encoder")

    torch.manual_seed(0)
    cells = FeatureMapTokens(in_channels=4, grid=2, dim=8)
    features = torch.randn(1, 4, 6, 6)
    changed = features.clone()
    changed[:, :, 3:, 3:] += 5.0  # only the bottom-right quarter of the map
    before, after = cells(features), cells(changed)
    assert before.shape == (1, 4, 8)
    assert torch.equal(before[:, :3], after[:, :3])  # cells are row-major: top-left, top-right, bottom-left
    assert (before[:, 3] - after[:, 3]).abs().max() > 1e-2

    torch.manual_seed(0)
    cfg = small_config("act", encoder={"auxiliary_state_keys": ["observation.environment_state"]})
    cfg.encoder.vision.tokens, cfg.encoder.vision.feature_grid = "feature_map", 3
    policy = Policy.from_dataset(cfg, dataset)
    encoder = policy.encoder
    assert encoder.tokens_per_step == 2 * 9 + 1  # 2 cameras of 9 cells, then the state
    pc = policy.config
    batch = training_batch(policy, dataset)
    cond = encoder(policy.normalizer.normalize_batch(batch))
    assert cond.tokens.shape == (16, encoder.num_tokens, pc.encoder.dim)
    assert encoder.num_tokens == (2 * 9 + 1) * pc.n_obs_steps
    assert_trains_saves_and_acts(policy, dataset, tmp_path, batch)  # the head and the auxiliary read-out learn from the cells


def test_trunk_without_normalization_layers_trains_saves_and_acts(dataset, tmp_path):
    """vision.norm: none builds the trunk with no normalization layer at all (what LeRobot's ACT
    computes with a from-scratch ResNet whose BatchNorm is frozen at its initial statistics); the
    default keeps GroupNorm; a policy on the bare trunk trains, saves and acts the same after loading."""
    from robopolicy.structs import from_dict

    with pytest.raises(ConfigError, match="norm"):
        from_dict(EncoderConfig, {"vision": {"norm": "batch"}}, "policy.encoder")

    def norm_layers(policy):
        return [m for m in policy.encoder.modules() if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d))]

    torch.manual_seed(0)
    assert norm_layers(Policy.from_dataset(small_config("act"), dataset))  # the default: GroupNorm
    cfg = small_config("act")
    cfg.encoder.vision.norm = "none"
    policy = Policy.from_dataset(cfg, dataset)
    assert norm_layers(policy) == []
    loaded = assert_trains_saves_and_acts(policy, dataset, tmp_path)
    assert loaded.config.encoder.vision.norm == "none" and norm_layers(loaded) == []
