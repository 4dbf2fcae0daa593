"""Diffusion head (DDPM training; DDPM or DDIM sampling), noise schedules from `diffusers`.

Training adds noise of a random level to the normalized action chunk and teaches the denoiser to
predict the noise (epsilon) or the clean chunk (sample). Sampling starts from Gaussian noise and
denoises in `steps` steps. With a prefix, the committed actions are re-noised to the current level
and written over the sample before every step (inpainting), then set exactly at the end.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import nn

from robopolicy.policy.config import PolicyConfig
from robopolicy.policy.encoders.base import Conditioning
from robopolicy.policy.heads.common import ActionHead, as_prefix_mask, masked_mean
from robopolicy.policy.heads.denoiser import build_denoiser


class DiffusionHead(ActionHead):
    def __init__(self, cfg: PolicyConfig, action_dim: int, pooled_dim: int, token_dim: int):
        super().__init__()
        self.cfg = cfg.diffusion
        self.horizon = cfg.horizon
        self.action_dim = action_dim
        self.denoiser = build_denoiser(cfg.denoiser, action_dim, cfg.horizon, pooled_dim, token_dim)
        self.noise_scheduler = DDPMScheduler(
            num_train_timesteps=self.cfg.num_train_timesteps, beta_schedule=self.cfg.beta_schedule,
            clip_sample=self.cfg.clip_sample, prediction_type=self.cfg.prediction_type,
            timestep_spacing=self.cfg.timestep_spacing)
        self._samplers: dict[int, DDIMScheduler | DDPMScheduler] = {}

    def inference_networks(self) -> list[nn.Module]:
        return [self.denoiser]

    def loss(self, cond: Conditioning, actions: torch.Tensor, is_pad: torch.Tensor | None = None) -> dict:
        noise = torch.randn_like(actions)
        t = torch.randint(0, self.cfg.num_train_timesteps, (actions.shape[0],), device=actions.device)
        noisy = self.noise_scheduler.add_noise(actions, noise, t)
        pred = self.denoiser(noisy, t, cond).float()
        target = noise if self.cfg.prediction_type == "epsilon" else actions
        loss = masked_mean((pred - target) ** 2, is_pad)
        return {"loss": loss, "mse": loss.detach()}

    def _sampler(self, steps: int):
        """The sampling scheduler for `steps` steps, built once (~2 ms of Python each time otherwise).

        DDPM and DDIM steps read only their configuration and timesteps, so one instance serves
        every chunk.
        """
        if steps not in self._samplers:
            kind = DDIMScheduler if self.cfg.scheduler == "ddim" else DDPMScheduler
            scheduler = kind.from_config(self.noise_scheduler.config)
            scheduler.set_timesteps(steps)
            self._samplers[steps] = scheduler
        return self._samplers[steps]

    @torch.no_grad()
    def sample(self, cond: Conditioning, steps: int | None = None, prefix: torch.Tensor | None = None,
               prefix_mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        prepared = self.denoiser.prepare(cond)
        return self.denoise(lambda x, t: self.denoiser(x, t, cond, prepared=prepared), cond.batch_size,
                            cond.tokens.device, steps, prefix, prefix_mask, generator)

    @torch.no_grad()
    def denoise(self, predict, batch_size: int, device, steps: int | None = None, prefix: torch.Tensor | None = None,
                prefix_mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """This head's sampler run on `predict(x, t)` -> noise (or sample) prediction: the head's own
        denoiser in `sample`, or several policies' combined prediction (test-time composition)."""
        steps = steps or self.cfg.num_inference_steps
        if not 1 <= steps <= self.cfg.num_train_timesteps:
            raise ValueError(f"diffusion steps must be in [1, {self.cfg.num_train_timesteps}], got {steps}")
        scheduler = self._sampler(steps)
        b = batch_size
        x = randn_tensor((b, self.horizon, self.action_dim), generator=generator, device=device)
        known, mask = as_prefix_mask(prefix, prefix_mask, x)
        prefix_noise = randn_tensor(x.shape, generator=generator, device=device) if known is not None else None
        for t in scheduler.timesteps:
            if known is not None:
                noisy_known = scheduler.add_noise(known, prefix_noise, t.expand(b))
                x = torch.where(mask, noisy_known, x)
            out = predict(x, t.expand(b).to(device)).float()
            x = scheduler.step(out, t, x, generator=generator).prev_sample
        if known is not None:
            x = torch.where(mask, known, x)
        return x
