"""RL fine-tuning: exact chain likelihoods, PPO's starting ratio, batched = one-by-one, resumable runs."""

import json
import math

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from robopolicy.policy.policy import Policy
from robopolicy.rl.chain import correlate, make_chain
from robopolicy.rl.config import FinetuneConfig, PPOConfig
from robopolicy.rl.finetune import Learner, finetune, load_finetune_config
from robopolicy.rl.vector import ChunkEnvs

TOY = "test/reach"  # tests/plugins/toy_env.py


def toy_windows(policy, n, seed=0):
    """`n` observation windows of the toy env after a few random steps (distinct states)."""
    with ChunkEnvs(TOY, n, policy.config.n_obs_steps, workers=0) as envs:
        envs.reset({i: seed + i for i in range(n)})
        rng = np.random.default_rng(seed)
        results = envs.step({i: rng.uniform(-1, 1, (3, 1)).astype(np.float32) for i in range(n)})
    return [results[i].window for i in range(n)]


@pytest.fixture(scope="module")
def toy_policy(toy_checkpoint):
    return Policy.load(toy_checkpoint)


def test_flow_chain_log_prob_is_the_gaussian_density_of_each_euler_step(toy_policy):
    policy = toy_policy
    chain = make_chain(policy.head, 4, policy.encoder.pooled_dim, 0.05, 0.2)
    torch.nn.init.normal_(chain.noise.net[-1].weight, std=0.5)  # state-dependent noise, not the initial constant
    with torch.no_grad():
        cond = policy.encode(policy.observation_batches(toy_windows(policy, 3)))
        chains, _ = chain.sample(cond, torch.Generator().manual_seed(0))
        got = chain.log_prob(cond, chains)["log_prob"]
    assert got.shape == (3, 4)
    for k in range(4):
        x, t = chains[:, k], 1.0 - k / 4
        with torch.no_grad():
            v = policy.head.denoiser(x, torch.full((3,), t * 1000.0), cond)  # the plain forward, nothing prepared
            std = chain.noise(x, torch.full((3,), t), cond.pooled)
        assert 0.05 <= float(std.min()) and float(std.max()) <= 0.2 and float(std.std()) > 0
        mean = (x - v / 4).clamp(-1, 1)
        direct = torch.distributions.Normal(mean, std).log_prob(chains[:, k + 1]).flatten(1).sum(-1)
        torch.testing.assert_close(got[:, k], direct, atol=1e-3, rtol=1e-5)
        z = (chains[:, k + 1] - mean) / std  # the transitions really are those Gaussians
        assert abs(float(z.mean())) < 0.5 and 0.6 < float(z.std()) < 1.4


def test_only_the_last_stochastic_steps_get_noise_and_a_likelihood(toy_policy):
    """With stochastic=2 of 4 steps the chain starts as the deterministic sampler (no noise, whatever
    the draws) and the likelihood is the Gaussian density of the last two transitions alone."""
    policy = toy_policy
    chain = make_chain(policy.head, 4, policy.encoder.pooled_dim, 0.05, 0.2, stochastic=2)
    assert list(chain.stochastic_steps) == [2, 3]
    with torch.no_grad():
        cond = policy.encode(policy.observation_batches(toy_windows(policy, 3)))
        noise = torch.randn(3, 5, policy.head.horizon, policy.head.action_dim, generator=torch.Generator().manual_seed(1))
        chains, sampled = chain.sample(cond, noise=noise)
        other = noise.clone()
        other[:, 1:3] = torch.randn_like(other[:, 1:3])  # draws the deterministic steps must ignore
        chains2, _ = chain.sample(cond, noise=other)
        out = chain.log_prob(cond, chains)
    torch.testing.assert_close(chains2, chains)
    x = chains[:, 0]
    for k in range(2):  # the prefix: the deterministic Euler steps
        with torch.no_grad():
            v = policy.head.denoiser(x, torch.full((3,), (1.0 - k / 4) * 1000.0), cond)
        x = (x - v / 4).clamp(-1, 1)
        torch.testing.assert_close(chains[:, k + 1], x, atol=1e-5, rtol=1e-5)
    assert out["log_prob"].shape == (3, 2) and out["outputs"].shape[1] == 2
    torch.testing.assert_close(out["log_prob"].sum(-1), sampled, atol=1e-4, rtol=1e-6)
    for j, k in enumerate((2, 3)):
        x = chains[:, k]
        with torch.no_grad():
            v = policy.head.denoiser(x, torch.full((3,), (1.0 - k / 4) * 1000.0), cond)
            std = chain.noise(x, torch.full((3,), 1.0 - k / 4), cond.pooled)
        direct = torch.distributions.Normal((x - v / 4).clamp(-1, 1), std).log_prob(chains[:, k + 1]).flatten(1).sum(-1)
        torch.testing.assert_close(out["log_prob"][:, j], direct, atol=1e-3, rtol=1e-5)
    with pytest.raises(ValueError, match="stochastic steps"):
        make_chain(policy.head, 4, policy.encoder.pooled_dim, 0.05, 0.2, stochastic=5)


def test_chain_likelihood_counts_only_the_scored_actions(toy_policy):
    """With `scored`, a transition's log-likelihood is the Gaussian density of the executed actions only."""
    policy = toy_policy
    full = make_chain(policy.head, 3, policy.encoder.pooled_dim, 0.05, 0.2)
    part = make_chain(policy.head, 3, policy.encoder.pooled_dim, 0.05, 0.2, scored=slice(1, 3))
    torch.nn.init.normal_(full.noise.net[-1].weight, std=0.5)  # state-dependent noise
    part.noise.load_state_dict(full.noise.state_dict())
    with torch.no_grad():
        cond = policy.encode(policy.observation_batches(toy_windows(policy, 3)))
        chains, sampled = part.sample(cond, torch.Generator().manual_seed(1))
        got = part.log_prob(cond, chains)["log_prob"]
        torch.testing.assert_close(got.sum(-1), sampled, atol=1e-4, rtol=1e-6)  # sampling scores the same
        for k in range(3):
            mean, std, _ = full.step(chains[:, k], k, cond, policy.head.denoiser.prepare(cond))
            direct = torch.distributions.Normal(mean[:, 1:3], std[:, 1:3]).log_prob(chains[:, k + 1, 1:3])
            torch.testing.assert_close(got[:, k], direct.flatten(1).sum(-1), atol=1e-3, rtol=1e-5)
    assert part.scored_elements == 2 * policy.head.action_dim
    # the chunk's unexecuted actions do not move the likelihood at all
    moved = chains.clone()
    moved[:, -1, 0] += 0.3
    with torch.no_grad():
        torch.testing.assert_close(part.log_prob(cond, moved)["log_prob"], got)
        assert not torch.allclose(full.log_prob(cond, moved)["log_prob"], full.log_prob(cond, chains)["log_prob"])


def test_correlated_noise_has_its_multivariate_gaussian_likelihood(toy_policy):
    """With noise correlated across the chunk's time steps, each transition's log-likelihood is the
    density of the multivariate Gaussian (per action dimension, covariance std std^T * C) over the
    scored actions, and the sampled noise has that correlation."""
    policy, rho, scored = toy_policy, 0.8, slice(0, 3)
    chain = make_chain(policy.head, 2, policy.encoder.pooled_dim, 0.05, 0.2, scored=scored, correlation=rho)
    torch.nn.init.normal_(chain.noise.net[-1].weight, std=0.5)  # state-dependent, per-element noise
    with torch.no_grad():
        cond = policy.encode(policy.observation_batches(toy_windows(policy, 3)))
        chains, sampled = chain.sample(cond, torch.Generator().manual_seed(2))
        got = chain.log_prob(cond, chains)["log_prob"]
        torch.testing.assert_close(got.sum(-1), sampled, atol=1e-4, rtol=1e-6)
        h = len(range(policy.head.horizon)[scored])
        correlation = rho * torch.ones(h, h) + (1 - rho) * torch.eye(h)
        for k in range(2):
            mean, std, _ = chain.step(chains[:, k], k, cond, policy.head.denoiser.prepare(cond))
            x, m, sd = (t[:, scored].transpose(1, 2).double() for t in (chains[:, k + 1], mean, std))  # (B, A, h)
            cov = sd.unsqueeze(-1) * correlation.double() * sd.unsqueeze(-2)
            direct = torch.distributions.MultivariateNormal(m, covariance_matrix=cov).log_prob(x).sum(-1)
            torch.testing.assert_close(got[:, k].double(), direct, atol=1e-3, rtol=1e-5)
    z = correlate(torch.randn(20000, 8, 2, generator=torch.Generator().manual_seed(3)), rho)
    empirical = torch.corrcoef(z[:, :, 0].T)
    torch.testing.assert_close(empirical, rho * torch.ones(8, 8) + (1 - rho) * torch.eye(8), atol=0.03, rtol=0)


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_diffusion_chain_means_are_ddim_steps(tmp_path, spacing):
    """Without noise the diffusion chain is the DDIM sampler the fine-tuned checkpoint evaluates with,
    visiting the timesteps the head's spacing says."""
    from conftest import LIFT_VIDEO
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.policy.config import EncoderConfig, PolicyConfig

    cfg = PolicyConfig(head="diffusion", encoder=EncoderConfig(dim=32, cameras=[]))
    cfg.denoiser.unet_dims = [32, 64]
    cfg.diffusion.timestep_spacing = spacing
    policy = Policy.from_dataset(cfg, LeRobotDataset(LIFT_VIDEO)).eval()
    chain = make_chain(policy.head, 5, policy.encoder.pooled_dim, 0.05, 0.2)
    scheduler = DDIMScheduler.from_config(policy.head.noise_scheduler.config)
    scheduler.set_timesteps(5)
    assert scheduler.timesteps.tolist() == chain.timesteps.tolist() == policy.head._sampler(5).timesteps.tolist()
    # leading ends on the nearly clean t = 0; trailing starts from the pure-noise level
    assert chain.timesteps.tolist() == ([80, 60, 40, 20, 0] if spacing == "leading" else [99, 79, 59, 39, 19])
    batch = {"observation.state": torch.randn(2, 2, 9), "task": ["a", "a"]}
    with torch.no_grad():
        cond = policy.encoder(policy.normalizer.normalize_batch(batch))
        x = torch.randn(2, cfg.horizon, 7) * 0.3
        prepared = policy.head.denoiser.prepare(cond)
        for k, t in enumerate(scheduler.timesteps):
            out = policy.head.denoiser(x, t.expand(2), cond)
            expected = scheduler.step(out, t, x).prev_sample
            mean, _ = chain.mean(x, k, cond, prepared)
            # float32 rounding in the clean estimate grows by sqrt(alpha_next / alpha_t) into the mean (~600x
            # from trailing's top level, alpha_bar 2.4e-7); elsewhere the two agree to 1e-4
            growth = max(1.0, (chain.alpha_next[k] / chain.alpha[k]).sqrt().item())
            torch.testing.assert_close(mean, expected, atol=1e-4 * growth, rtol=1e-4)
            x = expected


def test_batched_decisions_equal_one_by_one(toy_policy):
    """What the vectorized rollouts sample for many envs at once equals each env's own call."""
    policy = toy_policy
    chain = make_chain(policy.head, 4, policy.encoder.pooled_dim, 0.05, 0.2)
    windows = toy_windows(policy, 5, seed=7)
    noise = torch.randn(5, 5, policy.config.horizon, 1, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = chain.sample(policy.encode(policy.observation_batches(windows)), noise=noise)[0]
        single = torch.cat([chain.sample(policy.encode(policy.observation_batches([w])), noise=noise[i:i + 1])[0]
                            for i, w in enumerate(windows)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_chunk_envs_in_workers_step_like_envs_in_process(toy_policy):
    actions = {i: np.full((4, 1), 0.3 * (i - 1), np.float32) for i in range(3)}
    outcomes = []
    for workers in (0, 2):
        with ChunkEnvs(TOY, 3, 2, workers=workers) as envs:
            first = envs.reset({0: 5, 1: 6, 2: 7})
            stepped = envs.step(actions)
        outcomes.append((first, stepped))
    (first0, step0), (first2, step2) = outcomes
    for i in range(3):
        np.testing.assert_array_equal(first0[i]["observation.state"], first2[i]["observation.state"])
        np.testing.assert_array_equal(step0[i].window["observation.state"], step2[i].window["observation.state"])
        assert step0[i].window["observation.state"].shape == (2, 2)  # the last two observations
        assert (step0[i].steps, step0[i].success, step0[i].done) == (step2[i].steps, step2[i].success, step2[i].done)
        assert step0[i].steps == 4 or step0[i].done  # a chunk runs to its end unless the episode ends
    assert any(step0[i].steps == 4 for i in range(3))


@pytest.mark.parametrize("stochastic", [None, 1])
def test_ratio_is_one_at_the_start_of_an_update(toy_policy, toy_checkpoint, stochastic):
    policy = Policy.load(toy_checkpoint)
    learner = Learner(policy, FinetuneConfig(checkpoint=str(toy_checkpoint), denoising_steps=3,
                                             stochastic_steps=stochastic))
    windows = toy_windows(policy, 4, seed=3)
    chains, log_probs, _, _ = learner.act(windows, torch.Generator().manual_seed(0))
    cond = policy.encode(policy.observation_batches(windows))
    again = learner.chain.log_prob(cond, chains)["log_prob"].sum(-1)
    torch.testing.assert_close(again.detach(), log_probs, atol=1e-4, rtol=1e-6)
    assert torch.exp(again.detach() - log_probs).sub(1).abs().max() < 1e-4


def test_act_policies_are_refused_clearly(tmp_path):
    from robopolicy.errors import ConfigError

    cfg = load_finetune_config(None, ["checkpoint=some/act"])
    assert isinstance(cfg, FinetuneConfig) and isinstance(cfg.ppo, PPOConfig)
    from conftest import LIFT_VIDEO
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.policy.config import EncoderConfig, PolicyConfig

    policy = Policy.from_dataset(PolicyConfig(head="act", encoder=EncoderConfig(dim=32, cameras=[])),
                                 LeRobotDataset(LIFT_VIDEO))
    with pytest.raises(ConfigError, match="needs a flow or diffusion head"):
        Learner(policy, cfg)


def test_more_actions_per_decision_than_a_chunk_holds_is_refused(tmp_path, toy_checkpoint):
    from robopolicy.errors import ConfigError

    cfg = load_finetune_config(None, [f"checkpoint={toy_checkpoint}", f"env={TOY}", f"output_dir={tmp_path}",
                                      "n_action_steps=99"])
    with pytest.raises(ConfigError, match="n_action_steps=99"):
        finetune(cfg)
    assert not (tmp_path / "finetune" / "checkpoints").exists()


def test_a_timestep_spacing_for_a_flow_start_is_refused(tmp_path, toy_checkpoint):
    from robopolicy.errors import ConfigError

    cfg = load_finetune_config(None, [f"checkpoint={toy_checkpoint}", f"env={TOY}", f"output_dir={tmp_path}",
                                      "timestep_spacing=leading"])
    with pytest.raises(ConfigError, match=f"{toy_checkpoint}: timestep_spacing=leading.*head is flow"):
        finetune(cfg)
    assert not (tmp_path / "finetune").exists()


def _toy_finetune(root, toy_checkpoint, iterations, resume=False, extra=()):
    overrides = [f"checkpoint={toy_checkpoint}", f"env={TOY}", f"output_dir={root}", "name=ft",
                 f"iterations={iterations}", "envs=3", "workers=1", "max_steps=30", "eval_every=0",
                 "eval.episodes=3", "eval.workers=1", "progress=false", "ppo.minibatch_size=16", "ppo.epochs=2",
                 "ppo.target_kl=null", "n_action_steps=2", *extra]
    return finetune(load_finetune_config(None, overrides), resume=resume)


def test_validation_seeds_that_overlap_the_evaluation_seeds_are_refused(tmp_path, toy_checkpoint):
    from robopolicy.errors import ConfigError

    with pytest.raises(ConfigError, match="overlap the evaluation seeds"):
        _toy_finetune(tmp_path, toy_checkpoint, 1, extra=["validation_episodes=5", "validation_seed=100002"])
    assert not (tmp_path / "ft").exists()


@pytest.mark.slow
def test_the_result_is_the_checkpoint_chosen_on_validation_seeds(tmp_path, toy_checkpoint):
    """Selection keeps the best validation score (the start included) and reports that checkpoint."""
    from robopolicy.evaluate.config import EvalConfig
    from robopolicy.evaluate.evaluator import evaluate

    out = _toy_finetune(tmp_path, toy_checkpoint, 3, extra=["validation_episodes=6", "validation_every=1",
                                                            "validation_seed=200000", "max_steps=20"])
    metrics = [json.loads(line) for line in (tmp_path / "ft/metrics.jsonl").read_text().splitlines()]
    scores = {m["step"]: m["validation/success_rate"] for m in metrics if "validation/success_rate" in m}
    assert sorted(scores) == [0, 1, 2, 3]
    chosen = min(scores, key=lambda i: (-scores[i], i))  # the first of the best
    assert out["selected_iteration"] == chosen and out["best_validation"] == scores[chosen]
    best = tmp_path / "ft/checkpoints/best"
    assert out["fine_tuned"] == str(best)
    again = evaluate(best, TOY, EvalConfig(seed=200000, episodes=6, workers=1, videos=0, max_steps=20,
                                           n_action_steps=2, inference_steps=4), tmp_path / "again", progress=False)
    assert again.summary["success_rate"] == scores[chosen]  # the kept folder is the one that scored it
    assert out["success_last"] is not None and out["success_after"] is not None


@pytest.mark.slow
def test_finetune_writes_an_ordinary_checkpoint_and_resumes_bit_exactly(tmp_path, toy_checkpoint):
    straight = _toy_finetune(tmp_path / "a", toy_checkpoint, 2)
    assert straight["success_before"] is not None and straight["success_after"] is not None
    assert straight["env_steps"] > 0
    last = tmp_path / "a/ft/checkpoints/last"
    tuned = Policy.load(last)  # an ordinary policy folder
    assert tuned.config.flow.num_inference_steps == 4  # samples with the chain's K deterministic steps
    assert tuned.config.n_action_steps == 2  # and executes as many actions per chunk as the rollouts did
    start = Policy.load(toy_checkpoint)
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, start.state_dict()[k])]
    assert changed, "fine-tuning changed no weight"
    metrics = [json.loads(line) for line in (tmp_path / "a/ft/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "rollout/success_rate" in m] == [1, 2]
    assert all(math.isfinite(m["ppo/approx_kl"]) for m in metrics if "ppo/approx_kl" in m)
    assert (tmp_path / "a/ft/curve.png").is_file()

    _toy_finetune(tmp_path / "b", toy_checkpoint, 1)  # stopped after one iteration...
    resumed = _toy_finetune(tmp_path / "b", toy_checkpoint, 2, resume=True)  # ...and continued
    a, b = Policy.load(last).state_dict(), Policy.load(tmp_path / "b/ft/checkpoints/last").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["env_steps"] == straight["env_steps"]
    assert resumed["success_after"] == straight["success_after"]


@pytest.mark.slow
def test_a_wall_time_budget_ends_the_run_as_its_last_iteration_would(tmp_path, toy_checkpoint):
    """Once the budget is spent the run stops and scores where it stands, and a resume adds nothing."""
    budget = ["wall_minutes=1e-6"]  # spent by the first iteration
    out = _toy_finetune(tmp_path, toy_checkpoint, 5, extra=budget)
    assert out["iterations"] == 1 and out["success_after"] is not None
    metrics = [json.loads(line) for line in (tmp_path / "ft/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "rollout/success_rate" in m] == [1]
    assert [m["step"] for m in metrics if "eval/success_rate" in m] == [0, 1]  # before, and where it stopped
    again = _toy_finetune(tmp_path, toy_checkpoint, 5, resume=True, extra=budget)
    assert again["iterations"] == 1 and again["env_steps"] == out["env_steps"]


def _shifted_overrides(root, toy_checkpoint):
    return [f"checkpoint={toy_checkpoint}", "env=test/reach-shifted", f"output_dir={root}", "name=shifted",
            "iterations=12", "envs=16", "workers=0", "eval_every=0", "eval.episodes=30", "eval.workers=1",
            "progress=false", "ppo.epochs=8"]


@pytest.mark.slow
def test_finetuning_learns_what_the_demonstrations_did_not_show(tmp_path, toy_checkpoint):
    """test/reach-shifted: success lies 0.3 beyond the target the expert went to; PPO finds it."""
    out = finetune(load_finetune_config(None, _shifted_overrides(tmp_path, toy_checkpoint)))
    assert out["success_before"] < 0.5  # imitation alone mostly stops short
    assert out["success_after"] >= out["success_before"] + 0.3, out
    # the result is an ordinary checkpoint that the evaluator scores the same way
    from robopolicy.evaluate.config import EvalConfig
    from robopolicy.evaluate.evaluator import evaluate

    again = evaluate(out["fine_tuned"], "test/reach-shifted", EvalConfig(episodes=30, workers=1, videos=0),
                     tmp_path / "again", progress=False)
    assert again.summary["success_rate"] == out["success_after"]


@pytest.mark.slow
def test_shuffled_advantages_learn_nothing_of_what_the_real_ones_learn(tmp_path, toy_checkpoint):
    """The control run keeps every update's size and loses its signal: the shifted success stays unfound,
    where the same run with the real advantages gains >= 30 points (the test above)."""
    overrides = [*_shifted_overrides(tmp_path, toy_checkpoint), "ppo.shuffle_advantages=true"]
    out = finetune(load_finetune_config(None, overrides))
    assert out["success_after"] < out["success_before"] + 0.3, out
