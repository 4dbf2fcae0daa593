"""Flow-matching head (rectified flow): a straight path from the action chunk to noise.

x_t = t * noise + (1 - t) * actions, t in [0, 1]; the network predicts the velocity
u = noise - actions. Training times follow pi0: t = time_min + (1 - time_min) * Beta(1.5, 1), which
spends more updates near the noisy end. Sampling integrates dx/dt = v from t = 1 to 0 with Euler
steps — as few as 1 or 2 steps give usable chunks, which is why flow is the low-latency head.
With a prefix, committed actions are placed on their own straight path at every step.
"""

from __future__ import annotations

import torch
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from robopolicy.policy.config import PolicyConfig
from robopolicy.policy.encoders.base import Conditioning
from robopolicy.policy.heads.common import ActionHead, as_prefix_mask, masked_mean
from robopolicy.policy.heads.denoiser import build_denoiser

TIME_SCALE = 1000.0  # flow time in [0, 1] is embedded like diffusion steps in [0, 1000]


class FlowHead(ActionHead):
    def __init__(self, cfg: PolicyConfig, action_dim: int, pooled_dim: int, token_dim: int):
        super().__init__()
        self.cfg = cfg.flow
        self.horizon = cfg.horizon
        self.action_dim = action_dim
        self.denoiser = build_denoiser(cfg.denoiser, action_dim, cfg.horizon, pooled_dim, token_dim)

    def sample_time(self, n: int, device) -> torch.Tensor:
        beta = torch.distributions.Beta(torch.tensor(self.cfg.time_beta_alpha), torch.tensor(self.cfg.time_beta_beta))
        t = beta.sample((n,)).to(device)
        return self.cfg.time_min + (1.0 - self.cfg.time_min) * t

    def inference_networks(self) -> list[nn.Module]:
        return [self.denoiser]

    def loss(self, cond: Conditioning, actions: torch.Tensor, is_pad: torch.Tensor | None = None) -> dict:
        noise = torch.randn_like(actions)
        t = self.sample_time(actions.shape[0], actions.device)
        x_t = t[:, None, None] * noise + (1.0 - t[:, None, None]) * actions
        v = self.denoiser(x_t, t * TIME_SCALE, cond).float()
        loss = masked_mean((v - (noise - actions)) ** 2, is_pad)
        return {"loss": loss, "mse": loss.detach()}

    @torch.no_grad()
    def sample(self, cond: Conditioning, steps: int | None = None, prefix: torch.Tensor | None = None,
               prefix_mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        steps = steps or self.cfg.num_inference_steps
        if steps < 1:
            raise ValueError(f"flow steps must be >= 1, got {steps}")
        b = cond.batch_size
        device = cond.tokens.device
        noise = randn_tensor((b, self.horizon, self.action_dim), generator=generator, device=device)
        known, mask = as_prefix_mask(prefix, prefix_mask, noise)
        x = noise
        dt = 1.0 / steps
        prepared = self.denoiser.prepare(cond)
        for i in range(steps):
            t = 1.0 - i * dt
            if known is not None:
                x = torch.where(mask, t * noise + (1.0 - t) * known, x)
            time = torch.full((b,), t * TIME_SCALE, device=device)
            x = x - dt * self.denoiser(x, time, cond, prepared=prepared).float()
        if known is not None:
            x = torch.where(mask, known, x)
        return x
