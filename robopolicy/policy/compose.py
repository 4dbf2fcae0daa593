"""Test-time composition of flow policies (GPC, "Compose Your Policies!", 2025).

Several flow policies with the same action space sample one chunk together: at every Euler step the
velocity is a convex combination of each policy's velocity at the same point, each policy reading
its own observations (one from the cameras, one from low-dim state; or trained on different data).
With weights summing to 1 the combined field is still a flow from the noise to the actions, and where
the parts agree it is theirs; where they disagree it follows the weighted consensus, which can beat
each part (a low-dim policy's precise positions with a camera policy's view of what it cannot see).

Each policy normalizes actions with its own statistics. The chain runs in the first policy's
normalized action space; the point is mapped to each other policy's space (through robot units) and
its velocity back (normalization is affine per dimension, so velocities scale by the ratio of the
ranges). Parts trained on the same task's data have the same statistics, and then both maps are the
identity. `ComposedPolicy` offers what evaluation and deployment use of a `Policy`: the observation
keys (the union), the chunk layout, `predict_chunk`, and batched `sample_actions`.

Diffusion policies compose the same way through their noise (or sample) predictions: at every
DDIM/DDPM step of the first policy's sampler the prediction is the weighted sum of each policy's at
the same noisy point and timestep. A noisy point only means the same thing to two diffusion policies
that share the noise schedule and the action normalization, so those must match (parts trained on
the same task's data with the same head settings do); flow and diffusion policies do not mix.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor

from robopolicy.errors import ConfigError
from robopolicy.policy.heads.diffusion import DiffusionHead
from robopolicy.policy.heads.flow import TIME_SCALE, FlowHead


class ComposedPolicy:
    """Flow (or diffusion) policies sampling together with weights `weights` (non-negative, summing to 1)."""

    supports_prefix = False

    def __init__(self, policies: Sequence, weights: Sequence[float] | None = None):
        if len(policies) < 2:
            raise ConfigError("composition needs at least two policies")
        weights = list(weights) if weights is not None else [1.0 / len(policies)] * len(policies)
        if len(weights) != len(policies):
            raise ConfigError(f"--compose-weights: {len(policies)} weights needed, got {len(weights)}")
        if any(w < 0 for w in weights) or abs(sum(weights) - 1.0) > 1e-6:
            raise ConfigError(f"--compose-weights must be non-negative and sum to 1, got {weights}")
        first = policies[0]
        kinds = {type(p.head) for p in policies}
        if not (kinds <= {FlowHead} or kinds <= {DiffusionHead}):
            heads = sorted({p.config.head for p in policies})
            raise ConfigError(f"composition combines flow policies, or diffusion policies, of one kind; got {heads}")
        self.diffusion = kinds == {DiffusionHead}
        if self.diffusion:
            _check_same_noise_space(policies)
        for p in policies:
            layout = (p.spec.action_dim, p.config.horizon, p.chunk_start, p.config.n_obs_steps)
            ours = (first.spec.action_dim, first.config.horizon, first.chunk_start, first.config.n_obs_steps)
            if layout != ours:
                raise ConfigError("composed policies must share action size, horizon, action offset and"
                                  f" observation steps: {ours} vs {layout}")
        self.policies, self.weights = list(policies), [float(w) for w in weights]
        # one normalized unit of each policy's actions in units of the first's (1 for the first itself)
        self.ratios = [torch.ones(1) if p is first else _ratio(p, first) for p in self.policies]
        self.config = first.config
        features = {f.key: f for p in self.policies for f in p.spec.features}
        self.spec = dataclasses.replace(first.spec, features=list(features.values()))

    @property
    def observation_keys(self) -> list[str]:
        keys: list[str] = []
        for p in self.policies:
            keys += [k for k in p.observation_keys if k not in keys]
        return keys

    @property
    def chunk_start(self) -> int:
        return self.policies[0].chunk_start

    @property
    def stats(self):
        return self.policies[0].stats

    def eval(self) -> "ComposedPolicy":
        for p in self.policies:
            p.eval()
        return self

    def observation_batches(self, observations: Sequence[Mapping[str, Any]]) -> list[dict]:
        """Several env/robot observations -> one batch per policy, each in that policy's own format."""
        return [p.observation_batches(observations) for p in self.policies]

    def predict_chunk(self, observation: Mapping[str, Any], steps: int | None = None, prefix: np.ndarray | None = None,
                      generator: torch.Generator | None = None) -> np.ndarray:
        """(H', A) robot-unit actions from the combined velocity field (see the module docstring)."""
        if prefix is not None:
            raise ConfigError("composed policies do not continue committed prefixes (use the receding strategy)")
        actions = self.sample_actions(self.observation_batches([observation]), steps=steps, generator=generator)
        return actions[0].float().numpy()

    @torch.no_grad()
    def sample_actions(self, batches: Sequence[Mapping[str, Any]], steps: int | None = None,
                       generator: torch.Generator | list[torch.Generator] | None = None,
                       noise: torch.Tensor | None = None) -> torch.Tensor:
        """Batched inference (what batched evaluation calls): one batch per policy, as
        `observation_batches` makes them -> (B, H', A) robot-unit actions. `generator`: one for the
        batch, or a list with one per row (`Policy.sample_actions`). `noise` (flow only): the chain's
        starting point, (B, horizon, A), instead of a draw from `generator`."""
        first = self.policies[0]
        steps = steps or first.head.cfg.num_inference_steps
        conds = [p.encode(b) for p, b in zip(self.policies, batches)]
        prepared = [p.head.denoiser.prepare(c) for p, c in zip(self.policies, conds)]
        n = conds[0].batch_size
        if self.diffusion:
            x = first.head.denoise(self._combined_prediction(conds, prepared), n, torch.device("cpu"), steps,
                                   generator=generator)
            return first.normalizer.unnormalize("action", x)[:, first.chunk_start:]
        shape = (n, first.config.horizon, first.spec.action_dim)
        x = randn_tensor(shape, generator=generator) if noise is None else noise.to(torch.float32)
        for i in range(steps):
            t = 1.0 - i / steps
            time = torch.full((n,), t * TIME_SCALE)
            velocity = torch.zeros(shape)
            robot = first.normalizer.unnormalize("action", x)
            for p, w, ratio, cond, prep in zip(self.policies, self.weights, self.ratios, conds, prepared):
                if w == 0:
                    continue
                x_p = x if p is first else p.normalizer.normalize("action", robot)
                velocity += w * ratio * p.head.denoiser(x_p, time, cond, prepared=prep).float()
            x = x - velocity / steps
        return first.normalizer.unnormalize("action", x)[:, first.chunk_start:]

    def _combined_prediction(self, conds: list, prepared: list):
        """(x, t) -> the weighted sum of every diffusion policy's prediction at that noisy point."""
        def predict(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(x)
            for p, w, cond, prep in zip(self.policies, self.weights, conds, prepared):
                if w:
                    out += w * p.head.denoiser(x, t, cond, prepared=prep).float()
            return out

        return predict


def _check_same_noise_space(policies: Sequence) -> None:
    """Diffusion parts must agree on what a noisy action at step t is: schedule and normalization."""
    first = policies[0]
    keys = ("num_train_timesteps", "beta_schedule", "prediction_type", "clip_sample")
    zero = torch.zeros(1, 1, first.spec.action_dim)
    for p in policies[1:]:
        ours = {k: getattr(first.head.cfg, k) for k in keys}
        theirs = {k: getattr(p.head.cfg, k) for k in keys}
        if ours != theirs:
            raise ConfigError(f"composed diffusion policies must share the noise schedule: {ours} vs {theirs}")
        for point in (zero, zero + 1):
            if not torch.allclose(p.normalizer.unnormalize("action", point),
                                  first.normalizer.unnormalize("action", point), rtol=1e-5, atol=1e-6):
                raise ConfigError("composed diffusion policies must normalize actions alike (trained on the same"
                                  " task's data); these differ")


def _ratio(policy, first) -> torch.Tensor:
    """How much one normalized unit of `policy` is in units of `first` (1 where an action never varies)."""
    mine, theirs = _scale(policy), _scale(first)
    return torch.where(theirs.abs() > 0, mine / theirs.where(theirs.abs() > 0, torch.ones_like(theirs)),
                       torch.ones_like(theirs))


def _scale(policy) -> torch.Tensor:
    """Robot units per normalized unit, per action dimension (normalization is affine)."""
    zero = torch.zeros(1, 1, policy.spec.action_dim)
    return policy.normalizer.unnormalize("action", zero + 1) - policy.normalizer.unnormalize("action", zero)


def load_composed(checkpoints: Sequence[str], weights: Sequence[float] | None = None, weights_kind: str = "ema"):
    """A `ComposedPolicy` of the checkpoints, in order (the first fixes the chunk layout)."""
    from robopolicy.policy.policy import Policy

    return ComposedPolicy([Policy.load(c, weights=weights_kind) for c in checkpoints], weights)
