"""Stochastic denoising chains with exact likelihoods: what policy-gradient RL needs from a generative head.

A flow or diffusion policy samples a chunk by a deterministic (or nearly so) chain of denoising
steps, whose output has no tractable likelihood. Making every step a Gaussian transition turns the
chain x_0 -> x_1 -> ... -> x_K into a Markov process whose joint density is a product of Gaussians,
so PPO can weigh a sampled chunk by log pi(chain | o) = sum_k log N(x_{k+1}; mu_k, diag sigma_k^2).

Flow (ReinFlow, Zhang et al. 2025): mu_k = x_k - dt * v(x_k, t_k | o), the Euler step of the
trained velocity field, t_k = 1 - k/K, and sigma_k = sigma(x_k, t_k, o) from a small noise network,
bounded in [std_min, std_max] so that exploration never vanishes nor drowns the policy.

Diffusion (after DPPO, Ren et al. 2024): mu_k is the deterministic DDIM step from noise level
tau_k to tau_{k+1}, exactly the head's own DDIM sampler (the clean-chunk estimate clipped to the
action range when the head clips, re-noised to the next level), and sigma_k the same bounded noise
network.

With `correlation` rho > 0 a transition's noise is correlated across the chunk's time steps, the same
for every pair of them and independently per action dimension (covariance sigma sigma^T * (rho 11^T +
(1 - rho) I) along the chunk): most of it is then one offset for the whole chunk, the kind of
correction a chunk that misses its target by a few centimetres needs, instead of independent jitter
that averages out over the executed actions. The likelihood is that multivariate Gaussian's, in closed
form; any subset of time steps (the scored ones) is again equicorrelated with the same rho.

With `stochastic` = N < K only the last N transitions get noise and a likelihood (DPPO's fine-tuned
denoising steps); the first K - N run as the ordinary deterministic sampler. A step whose mean is
ill-conditioned for PPO is then left out of the ratio: a trailing-spaced DDIM chain's first step
starts at alpha_bar ~ 1e-7, where the clean-chunk estimate multiplies the network's error by
thousands. The deterministic prefix runs on the current network (the fine-tuned checkpoint samples
with one network), so its output x_{K-N} is, for PPO, part of the state the stochastic steps act in:
its drift as the network changes is the same kind of change as the env states' drift, which PPO's
surrogate ignores too.

`x_0` is standard normal and does not depend on the parameters, so it is left out of the
likelihood. With `scored` (a slice of the chunk's time steps) the likelihood counts only those
actions, the ones the env executes (as DPPO does): the others never reach the env, so their noise
only adds variance to the policy gradient and weight to the ratios. Means are clipped to
[-clip, clip] (the normalized action range, with a margin), as both papers do, so a chain cannot run
away from where the policy was trained. The noise network is for
training only: a fine-tuned checkpoint samples with its head's ordinary deterministic sampler.
"""

from __future__ import annotations

import math

import torch
from diffusers import DDIMScheduler
from torch import nn

from robopolicy.policy.encoders.base import Conditioning
from robopolicy.policy.heads.common import ActionHead, SinusoidalEmbedding
from robopolicy.policy.heads.diffusion import DiffusionHead
from robopolicy.policy.heads.flow import TIME_SCALE, FlowHead

LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class NoiseNet(nn.Module):
    """(x_k, t_k, pooled observation) -> per-element standard deviation in [std_min, std_max].

    The last layer starts at zero: every standard deviation starts at the middle of its range.
    """

    def __init__(self, horizon: int, action_dim: int, pooled_dim: int, std_min: float, std_max: float,
                 hidden: int = 256, time_dim: int = 32):
        super().__init__()
        if not 0 < std_min <= std_max:
            raise ValueError(f"noise bounds need 0 < std_min <= std_max, got {std_min}, {std_max}")
        self.std_min, self.std_max = std_min, std_max
        self.time = SinusoidalEmbedding(time_dim)
        self.net = nn.Sequential(nn.Linear(horizon * action_dim + time_dim + pooled_dim, hidden), nn.Mish(),
                                 nn.Linear(hidden, hidden), nn.Mish(), nn.Linear(hidden, horizon * action_dim))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        inputs = torch.cat([x.flatten(1), self.time(t * TIME_SCALE), pooled], dim=-1)
        unit = torch.sigmoid(self.net(inputs)).view_as(x)
        return self.std_min + (self.std_max - self.std_min) * unit


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, diag std^2) summed over every axis but the first: (B,)."""
    z = (x - mean) / std
    return (-0.5 * z.pow(2) - std.log() - LOG_SQRT_2PI).flatten(1).sum(-1)


def equicorrelated_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, rho: float) -> torch.Tensor:
    """log-density of chunks x (B, H, A) whose standardized noise z = (x - mean) / std has, for each action
    dimension, correlation rho between every two time steps: (B,).

    With C = rho 11^T + (1 - rho) I (H x H): z^T C^-1 z = (sum z^2 - rho / (1 + (H - 1) rho) (sum z)^2) / (1 - rho)
    and log det C = (H - 1) log(1 - rho) + log(1 + (H - 1) rho)."""
    if rho == 0.0:
        return gaussian_log_prob(x, mean, std)
    h = x.shape[1]
    z = (x - mean) / std
    quadratic = (z.pow(2).sum(1) - rho / (1 + (h - 1) * rho) * z.sum(1).pow(2)) / (1 - rho)  # (B, A)
    log_det = (h - 1) * math.log(1 - rho) + math.log(1 + (h - 1) * rho)
    return (-0.5 * (quadratic + log_det)).sum(-1) - std.log().flatten(1).sum(-1) - LOG_SQRT_2PI * z[0].numel()


def correlate(z: torch.Tensor, rho: float) -> torch.Tensor:
    """Standard normal z (..., H, A), independent, -> noise with correlation rho between any two of the H
    time steps (per action dimension), through the symmetric square root of rho 11^T + (1 - rho) I."""
    if rho == 0.0:
        return z
    h = z.shape[-2]
    shared = (math.sqrt(1 + (h - 1) * rho) - math.sqrt(1 - rho)) / h
    return math.sqrt(1 - rho) * z + shared * z.sum(-2, keepdim=True)


class StochasticChain(nn.Module):
    """A head's denoising chain with Gaussian transitions (see the module docstring).

    Subclasses give `transition(x_k, k, cond, prepared) -> (mean, velocity-or-denoiser output)`; the
    noise network gives the standard deviation.
    """

    def __init__(self, head: ActionHead, steps: int, pooled_dim: int, std_min: float, std_max: float,
                 clip: float = 1.0, scored: slice | None = None, correlation: float = 0.0,
                 stochastic: int | None = None):
        super().__init__()
        if steps < 1:
            raise ValueError(f"a denoising chain needs >= 1 step, got {steps}")
        if not 0.0 <= correlation < 1.0:
            raise ValueError(f"noise correlation must be in [0, 1), got {correlation}")
        stochastic = steps if stochastic is None else stochastic
        if not 1 <= stochastic <= steps:
            raise ValueError(f"stochastic steps must be in [1, {steps}] (the chain's length), got {stochastic}")
        self.head, self.steps, self.clip, self.correlation = head, steps, clip, correlation
        self.first_stochastic = steps - stochastic  # steps before it are deterministic
        self.scored = scored if scored is not None else slice(None)
        self.noise = NoiseNet(head.horizon, head.action_dim, pooled_dim, std_min, std_max)

    @property
    def scored_elements(self) -> int:
        """Gaussian dimensions per transition that the likelihood counts."""
        return len(range(self.head.horizon)[self.scored]) * self.head.action_dim

    @property
    def stochastic_steps(self) -> range:
        """The transitions k (x_k -> x_{k+1}) that get noise and a likelihood."""
        return range(self.first_stochastic, self.steps)

    def transition_log_prob(self, x_next: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """log N(x_next; mean, std^2), correlated across time as `correlation` says, over the scored time
        steps of the chunk: (B,)."""
        s = self.scored
        return equicorrelated_log_prob(x_next[:, s], mean[:, s], std[:, s], self.correlation)

    def level(self, k: int) -> float:
        """The noise level of x_k in [0, 1] (1: pure noise), the noise network's time input."""
        return 1.0 - k / self.steps

    def mean(self, x: torch.Tensor, k: int, cond: Conditioning, prepared) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean of x_{k+1}, the network's raw output at x_k)."""
        raise NotImplementedError

    def step(self, x: torch.Tensor, k: int, cond: Conditioning, prepared) -> tuple[torch.Tensor, ...]:
        mean, out = self.mean(x, k, cond, prepared)
        t = torch.full((x.shape[0],), self.level(k), device=x.device)
        return mean.clamp(-self.clip, self.clip), self.noise(x, t, cond.pooled), out

    @torch.no_grad()
    def sample(self, cond: Conditioning, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A chain (B, K + 1, H, A) in normalized action units (its last element is the chunk) and its
        log-likelihood (B,), summed over the transitions as it is sampled (no second pass).

        `noise` (B, K + 1, H, A), standard normal, replaces the draws from `generator`: the start
        and every transition's independent draws, before `correlate` (so a batch and its rows one by one
        agree).
        """
        b, device = cond.batch_size, cond.pooled.device
        shape = (b, self.steps + 1, self.head.horizon, self.head.action_dim)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=device)
        elif noise.shape != shape:
            raise ValueError(f"noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
        x = noise[:, 0]
        chain, log_prob = [x], torch.zeros(b, device=device)
        prepared = self.head.denoiser.prepare(cond)
        for k in range(self.steps):
            if k < self.first_stochastic:
                x = self.mean(x, k, cond, prepared)[0].clamp(-self.clip, self.clip)
            else:
                mean, std, _ = self.step(x, k, cond, prepared)
                x = mean + std * correlate(noise[:, k + 1], self.correlation)
                log_prob += self.transition_log_prob(x, mean, std)
            chain.append(x)
        return torch.stack(chain, dim=1), log_prob

    def log_prob(self, cond: Conditioning, chain: torch.Tensor) -> dict[str, torch.Tensor]:
        """Log-likelihoods (B, N) of `chain`'s N stochastic transitions under the current parameters,
        with the mean log standard deviation (B,) (the entropy's parameter-dependent part) and the
        network's outputs along them (B, N, H, A) (for a regularizer toward the starting policy). The
        deterministic prefix is not re-run: its output is the recorded x_{K-N}."""
        prepared = self.head.denoiser.prepare(cond)
        log_probs, log_stds, outs = [], [], []
        for k in self.stochastic_steps:
            mean, std, out = self.step(chain[:, k], k, cond, prepared)
            log_probs.append(self.transition_log_prob(chain[:, k + 1], mean, std))
            log_stds.append(std[:, self.scored].log().flatten(1).mean(-1))
            outs.append(out)
        return {"log_prob": torch.stack(log_probs, dim=1), "log_std": torch.stack(log_stds, dim=1).mean(-1),
                "outputs": torch.stack(outs, dim=1)}

    def network_outputs(self, cond: Conditioning, chain: torch.Tensor) -> torch.Tensor:
        """The head network's outputs (B, N, H, A) along `chain`'s stochastic transitions (for the starting
        policy's copy)."""
        prepared = self.head.denoiser.prepare(cond)
        return torch.stack([self.mean(chain[:, k], k, cond, prepared)[1] for k in self.stochastic_steps], dim=1)


class FlowChain(StochasticChain):
    """ReinFlow: Euler steps of the velocity field plus learned, bounded Gaussian noise."""

    head: FlowHead

    def mean(self, x, k, cond, prepared):
        t = self.level(k)
        time = torch.full((x.shape[0],), t * TIME_SCALE, device=x.device)
        v = self.head.denoiser(x, time, cond, prepared=prepared).float()
        return x - v / self.steps, v


class DiffusionChain(StochasticChain):
    """A DDIM chain (eta = 0 means) from the head's training schedule, plus learned, bounded noise."""

    head: DiffusionHead

    def __init__(self, head: DiffusionHead, steps: int, pooled_dim: int, std_min: float, std_max: float,
                 clip: float = 1.0, scored: slice | None = None, correlation: float = 0.0,
                 stochastic: int | None = None):
        super().__init__(head, steps, pooled_dim, std_min, std_max, clip, scored, correlation, stochastic)
        ddim = DDIMScheduler.from_config(head.noise_scheduler.config)  # the head's DDIM sampler's timesteps
        ddim.set_timesteps(steps)
        timesteps = ddim.timesteps.long()
        alphas = head.noise_scheduler.alphas_cumprod.float()
        self.register_buffer("timesteps", timesteps, persistent=False)
        self.register_buffer("alpha", alphas[timesteps], persistent=False)
        nxt = torch.cat([alphas[timesteps[1:]], torch.ones(1)])  # after the last step: clean
        self.register_buffer("alpha_next", nxt, persistent=False)

    def mean(self, x, k, cond, prepared):
        b = x.shape[0]
        out = self.head.denoiser(x, self.timesteps[k].expand(b), cond, prepared=prepared).float()
        a, a_next = self.alpha[k], self.alpha_next[k]
        if self.head.cfg.prediction_type == "epsilon":
            eps, clean = out, (x - (1 - a).sqrt() * out) / a.sqrt()
        else:
            eps, clean = (x - a.sqrt() * out) / (1 - a).sqrt(), out
        if self.head.cfg.clip_sample:  # as the head's DDIM sampler: the clean estimate clipped, not the noise
            clean = clean.clamp(-1.0, 1.0)
        return a_next.sqrt() * clean + (1 - a_next).sqrt() * eps, out


CHAINS: dict[type, type[StochasticChain]] = {FlowHead: FlowChain, DiffusionHead: DiffusionChain}


def make_chain(head: ActionHead, steps: int, pooled_dim: int, std_min: float, std_max: float,
               clip: float = 1.0, scored: slice | None = None, correlation: float = 0.0,
               stochastic: int | None = None) -> StochasticChain:
    """The stochastic chain of a flow or diffusion head (ACT has no denoising chain to fine-tune);
    `scored`: the chunk's time steps its likelihood counts (None: all); `correlation`: of the noise
    across the chunk's time steps; `stochastic`: how many of the last steps get noise (None: all)."""
    kind = CHAINS.get(type(head))
    if kind is None:
        raise TypeError(f"RL fine-tuning needs a flow or diffusion head (a denoising chain), not {type(head).__name__}")
    return kind(head, steps, pooled_dim, std_min, std_max, clip, scored, correlation, stochastic)
