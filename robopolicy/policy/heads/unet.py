"""1D temporal U-Net denoiser with FiLM conditioning (diffusion_policy's ConditionalUnet1D).

The action chunk is a (A channels x H steps) signal. Convolutions over time give the smoothness
prior that makes diffusion policies produce coherent trajectories; every residual block is
modulated (scale and shift, "FiLM") by the noise level and the observation's pooled vector.

FiLM is linear in its (Mish-activated) input, so its observation half is the same at every
denoising step of a chunk: `prepare(cond)` computes it once and `forward(..., prepared=...)` adds
only the noise-level half per step. Same weights, same result, ~25% less work per step at
inference, where reading the weights dominates on CPUs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from robopolicy.policy.config import DenoiserConfig
from robopolicy.policy.encoders.base import Conditioning
from robopolicy.policy.heads.common import SinusoidalEmbedding


@dataclass
class PreparedFiLM:
    """What every denoising step of a chunk shares (see `UNet1D.prepare`)."""

    observation: torch.Tensor  # (B, sum of 2C): every block's FiLM for the observation, bias included
    time_weight: torch.Tensor | None  # (sum of 2C, time_dim): every block's noise-level columns, stacked


class ConvBlock(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, groups: int):
        super().__init__(nn.Conv1d(cin, cout, kernel, padding=kernel // 2), nn.GroupNorm(groups, cout), nn.Mish())


class FiLMResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int, kernel: int, groups: int):
        super().__init__()
        self.first = ConvBlock(cin, cout, kernel, groups)
        self.second = ConvBlock(cout, cout, kernel, groups)
        self.film = nn.Sequential(nn.Mish(), nn.Linear(cond_dim, 2 * cout))
        self.skip = nn.Conv1d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        """`film` is this block's FiLM output (B, 2C), computed by `UNet1D` (see `prepare`)."""
        scale, shift = film[:, :, None].chunk(2, dim=1)  # (B, C, 1) each
        return self.second(self.first(x) * scale + shift) + self.skip(x)


class UNet1D(nn.Module):
    def __init__(self, cfg: DenoiserConfig, action_dim: int, horizon: int, cond_dim: int, time_dim: int = 128):
        super().__init__()
        dims = list(cfg.unet_dims)
        factor = 2 ** (len(dims) - 1)
        if horizon % factor:
            raise ValueError(f"the U-Net with {len(dims)} levels needs a horizon divisible by {factor}, got {horizon}")
        k, g = cfg.kernel_size, cfg.n_groups
        self.time_dim = time_dim
        self.time = nn.Sequential(SinusoidalEmbedding(time_dim), nn.Linear(time_dim, 4 * time_dim), nn.Mish(),
                                  nn.Linear(4 * time_dim, time_dim))
        c = time_dim + cond_dim
        self.down = nn.ModuleList()
        cin = action_dim
        for i, d in enumerate(dims):
            last = i == len(dims) - 1
            self.down.append(nn.ModuleList([
                FiLMResidualBlock(cin, d, c, k, g), FiLMResidualBlock(d, d, c, k, g),
                nn.Conv1d(d, d, 3, stride=2, padding=1) if not last else nn.Identity()]))
            cin = d
        self.mid = nn.ModuleList([FiLMResidualBlock(dims[-1], dims[-1], c, k, g),
                                  FiLMResidualBlock(dims[-1], dims[-1], c, k, g)])
        self.up = nn.ModuleList()
        for i, (d_out, d_in) in enumerate(zip(reversed(dims[:-1]), reversed(dims[1:]))):
            self.up.append(nn.ModuleList([
                FiLMResidualBlock(2 * d_in, d_out, c, k, g), FiLMResidualBlock(d_out, d_out, c, k, g),
                nn.ConvTranspose1d(d_out, d_out, 4, stride=2, padding=1)]))
        self.final = nn.Sequential(ConvBlock(dims[0], dims[0], k, g), nn.Conv1d(dims[0], action_dim, 1))

    def blocks(self) -> list[FiLMResidualBlock]:
        out = []
        for level in self.down:
            out += [level[0], level[1]]
        out += list(self.mid)
        for level in self.up:
            out += [level[0], level[1]]
        return out

    def film_layers(self) -> list[nn.Linear]:
        return [b.film[1] for b in self.blocks()]

    def prepare(self, cond: Conditioning) -> PreparedFiLM:
        """What every denoising step of a chunk shares: the FiLMs' observation halves, blocks side by side,
        and their noise-level columns stacked, so each step computes every block's FiLM in one product."""
        pooled = F.mish(cond.pooled)  # one product per block: stacking the weights would copy megabytes
        layers = self.film_layers()
        observation = torch.cat([F.linear(pooled, f.weight[:, self.time_dim:], f.bias) for f in layers], dim=1)
        return PreparedFiLM(observation, torch.cat([f.weight[:, :self.time_dim] for f in layers]))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                prepared: PreparedFiLM | None = None) -> torch.Tensor:
        """x (B, H, A) noisy actions, t (B,) noise level -> (B, H, A)."""
        h = self.denoise(rearrange(x, "b h a -> b a h"), self.films(t, cond, prepared))
        return rearrange(h, "b a h -> b h a")

    def films(self, t: torch.Tensor, cond: Conditioning, prepared: PreparedFiLM | None = None) -> list[torch.Tensor]:
        """Every block's FiLM output (B, 2C) for noise level `t`, in the order `denoise` uses them."""
        time = self.time(t).to(cond.pooled.dtype)
        if prepared is None:
            return [b.film(torch.cat([time, cond.pooled], dim=-1)) for b in self.blocks()]
        # the noise-level halves of all blocks in one product
        return list((F.linear(F.mish(time), prepared.time_weight) + prepared.observation).split(
            [f.out_features for f in self.film_layers()], dim=1))

    def denoise(self, h: torch.Tensor, films: list[torch.Tensor]) -> torch.Tensor:
        """The U-Net proper on a (B, A, H) signal."""
        films = iter(films)
        skips = []
        for block1, block2, downsample in self.down:
            h = block2(block1(h, next(films)), next(films))
            skips.append(h)
            h = downsample(h)
        for block in self.mid:
            h = block(h, next(films))
        for block1, block2, upsample in self.up:
            h = torch.cat([h, skips.pop()], dim=1)
            h = upsample(block2(block1(h, next(films)), next(films)))
        return self.final(h)
