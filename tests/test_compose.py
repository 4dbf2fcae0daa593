"""Test-time composition of flow policies (GPC): the combined field, evaluation with it, weights chosen on validation seeds."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from robopolicy.errors import ConfigError
from robopolicy.policy.compose import ComposedPolicy
from robopolicy.policy.policy import Policy


@pytest.fixture(scope="module")
def pair(toy_checkpoint, tmp_path_factory):
    """The toy flow policy and a perturbed copy (same action statistics, different velocities)."""
    a = Policy.load(toy_checkpoint)
    b = Policy.load(toy_checkpoint)
    with torch.no_grad():
        for p in b.head.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    path = tmp_path_factory.mktemp("compose") / "perturbed"
    b.save(path)
    return a, b, path


def toy_observation(seed=3):
    rng = np.random.default_rng(seed)
    return {"observation.state": rng.normal(size=(2, 2)).astype(np.float32) * 0.3,
            "observation.environment_state": np.full((2, 1), 0.5, np.float32), "task": "reach the target"}


def chunk(policy, obs):
    return policy.predict_chunk(obs, generator=torch.Generator().manual_seed(11))


def test_the_combined_field_is_each_part_at_its_corners_and_between_them_otherwise(pair):
    a, b, _ = pair
    obs = toy_observation()
    np.testing.assert_allclose(chunk(ComposedPolicy([a, a], [0.5, 0.5]), obs), chunk(a, obs), atol=1e-5)
    np.testing.assert_allclose(chunk(ComposedPolicy([a, b], [1.0, 0.0]), obs), chunk(a, obs), atol=1e-5)
    np.testing.assert_allclose(chunk(ComposedPolicy([a, b], [0.0, 1.0]), obs), chunk(b, obs), atol=1e-5)
    mixed = chunk(ComposedPolicy([a, b], [0.5, 0.5]), obs)
    assert np.abs(mixed - chunk(a, obs)).max() > 1e-4 and np.abs(mixed - chunk(b, obs)).max() > 1e-4


def test_diffusion_policies_compose_through_their_noise_predictions(toy_checkpoint):
    import dataclasses
    from pathlib import Path

    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.policy.config import DenoiserConfig, DiffusionConfig, EncoderConfig, PolicyConfig

    demos = LeRobotDataset(Path(toy_checkpoint).parents[2] / "demos")
    cfg = PolicyConfig(head="diffusion", encoder=EncoderConfig(dim=16, cameras=[], state_keys=[
        "observation.state", "observation.environment_state"]), denoiser=DenoiserConfig(unet_dims=[16, 32]))
    torch.manual_seed(0)
    a = Policy.from_dataset(cfg, demos).eval()
    b = Policy.from_dataset(cfg, demos).eval()  # other initial weights: other noise predictions
    obs = toy_observation()
    np.testing.assert_allclose(chunk(ComposedPolicy([a, b], [1.0, 0.0]), obs), chunk(a, obs), atol=1e-5)
    np.testing.assert_allclose(chunk(ComposedPolicy([a, b], [0.0, 1.0]), obs), chunk(b, obs), atol=1e-5)
    mixed = chunk(ComposedPolicy([a, b], [0.5, 0.5]), obs)
    assert np.abs(mixed - chunk(a, obs)).max() > 1e-4 and np.abs(mixed - chunk(b, obs)).max() > 1e-4
    other = Policy.from_dataset(dataclasses.replace(cfg, diffusion=DiffusionConfig(num_train_timesteps=50)), demos)
    with pytest.raises(ConfigError, match="noise schedule"):
        ComposedPolicy([a, other])
    flow = Policy.load(toy_checkpoint)
    with pytest.raises(ConfigError, match="of one kind"):
        ComposedPolicy([a, flow])


def test_the_weight_search_grid_covers_every_part_count():
    """Two to four parts get the 0.25 grid; five or more, which that grid cannot hold, get equal weights."""
    from robopolicy.evaluate.composition import weight_grid

    assert weight_grid(2) == [[0.25, 0.75], [0.5, 0.5], [0.75, 0.25]]
    assert weight_grid(4) == [[0.25] * 4]
    assert weight_grid(5) == [[0.2] * 5]
    for parts in range(2, 8):
        grid = weight_grid(parts)
        assert grid and all(len(w) == parts and abs(sum(w) - 1) < 1e-9 and min(w) > 0 for w in grid)


def test_batched_composed_chunks_equal_one_by_one(pair, toy_checkpoint, tmp_path):
    """Batched evaluation samples a composition for many envs at once: each env's chunk is what
    one call for it alone gives from the same starting noise; and `eval --envs` runs it."""
    a, b, perturbed = pair
    composed = ComposedPolicy([a, b], [0.4, 0.6])
    observations = [toy_observation(seed) for seed in (1, 2, 3)]
    noise = torch.randn(3, a.config.horizon, a.spec.action_dim, generator=torch.Generator().manual_seed(5))
    batched = composed.sample_actions(composed.observation_batches(observations), noise=noise)
    single = torch.cat([composed.sample_actions(composed.observation_batches([o]), noise=noise[i:i + 1])
                        for i, o in enumerate(observations)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    one = composed.predict_chunk(observations[0], generator=torch.Generator().manual_seed(11))
    again = composed.sample_actions(composed.observation_batches(observations[:1]),
                                    generator=torch.Generator().manual_seed(11))[0].numpy()
    np.testing.assert_allclose(one, again, atol=1e-6)
    # a generator per row (what batched evaluation passes, one per episode) samples each row as alone
    generators = lambda: [torch.Generator().manual_seed(seed) for seed in (21, 22, 23)]  # noqa: E731
    per_row = composed.sample_actions(composed.observation_batches(observations), generator=generators()).numpy()
    alone = np.stack([composed.predict_chunk(o, generator=g) for o, g in zip(observations, generators())])
    np.testing.assert_allclose(per_row, alone, atol=1e-5)
    done = cli(tmp_path, "--checkpoint", str(toy_checkpoint), "--env", "test/reach", "--episodes", "4", "--workers",
               "1", "--envs", "2", "--videos", "0", "--compose", str(perturbed), "--compose-weights", "0.4,0.6",
               "--out", "batched", "--no-progress")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "batched/eval.json").read_text())
    assert report["timing"]["batched_envs"] == 2 and report["episodes"] == 4
    assert report["composed_with"]["weights"] == [0.4, 0.6]


def test_compositions_that_cannot_work_are_refused(pair, tmp_path):
    a, b, _ = pair
    with pytest.raises(ConfigError, match="sum to 1"):
        ComposedPolicy([a, b], [0.7, 0.7])
    with pytest.raises(ConfigError, match="2 weights needed"):
        ComposedPolicy([a, b], [1.0])
    from conftest import LIFT_VIDEO
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.policy.config import EncoderConfig, PolicyConfig

    act = Policy.from_dataset(PolicyConfig(head="act", encoder=EncoderConfig(dim=32, cameras=[])),
                              LeRobotDataset(LIFT_VIDEO))
    with pytest.raises(ConfigError, match="combines flow policies"):
        ComposedPolicy([a, act])


def cli(cwd, *args):
    return subprocess.run([sys.executable, "-m", "robopolicy.cli", "eval", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


@pytest.mark.slow
def test_eval_with_a_composition_and_weights_chosen_on_validation_seeds(pair, toy_checkpoint, tmp_path):
    _, _, perturbed = pair
    base = ["--checkpoint", str(toy_checkpoint), "--env", "test/reach", "--episodes", "6", "--workers", "1",
            "--videos", "0", "--compose", str(perturbed)]
    done = cli(tmp_path, *base, "--compose-weights", "0.5,0.5", "--out", "fixed", "--no-progress")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "fixed/eval.json").read_text())
    assert report["composed_with"] == {"checkpoints": [str(perturbed)], "weights": [0.5, 0.5]}
    searched = cli(tmp_path, *base, "--compose-search", "--search-episodes", "3", "--out", "search", "--no-progress")
    assert searched.returncode == 0, searched.stderr
    search = json.loads((tmp_path / "search/compose_search.json").read_text())
    assert [t["weights"] for t in search["trials"]] == [[0.25, 0.75], [0.5, 0.5], [0.75, 0.25]]
    assert all(t["seeds"] == [200000, 200002] for t in search["trials"])  # validation seeds only
    final = json.loads((tmp_path / "search/eval.json").read_text())
    assert final["composed_with"]["weights"] == search["best"] and final["seeds"][0] == 100000
    bad = cli(tmp_path, "--checkpoint", str(toy_checkpoint), "--env", "test/reach", "--compose-weights", "0.5,0.5")
    assert bad.returncode == 2 and "--compose" in bad.stderr
    overlapping = cli(tmp_path, *base, "--compose-search", "--search-seed", "100004", "--out", "x", "--no-progress")
    assert overlapping.returncode == 2 and "overlap the evaluation seeds" in overlapping.stderr


def test_deploy_with_a_composition_matches_its_offline_evaluation_step_for_step(pair, toy_checkpoint, tmp_path):
    """The real-time loop driving the composed policy reproduces the evaluator's composed episodes."""
    from robopolicy.deploy.run import deploy
    from robopolicy.deploy.safety import SafetyConfig
    from robopolicy.deploy.sim_robot import SimRobot
    from robopolicy.evaluate.config import EvalConfig
    from robopolicy.evaluate.evaluator import evaluate
    from robopolicy.policy.compose import load_composed

    _, _, perturbed = pair
    cfg = EvalConfig(env="test/reach", episodes=3, workers=1, videos=0, compose=[str(perturbed)],
                     compose_weights=[0.3, 0.7])
    offline = evaluate(toy_checkpoint, "test/reach", cfg, tmp_path / "eval", progress=False)
    for episode in offline.episodes:
        policy = load_composed([str(toy_checkpoint), str(perturbed)], [0.3, 0.7])
        report = deploy(policy, SimRobot("test/reach", seed=episode.seed), hz=50, strategy="sync", max_steps=60,
                        seed=episode.seed, safety=SafetyConfig(margin=10.0, max_delta_fraction=100.0))
        assert (report.success, report.steps) == (episode.success, episode.length)
    done = subprocess.run([sys.executable, "-m", "robopolicy.cli", "deploy", "--checkpoint", str(toy_checkpoint),
                           "--compose", str(perturbed), "--compose-weights", "0.3,0.7", "--robot", "sim:test/reach",
                           "--hz", "50", "--max-steps", "60"], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "task success:" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "robopolicy.cli", "deploy", "--checkpoint", str(toy_checkpoint),
                          "--compose", str(perturbed), "--strategy", "rtc", "--robot", "sim:test/reach"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
