"""Choose the network inside a diffusion or flow head."""

from __future__ import annotations

from torch import nn

from robopolicy.policy.config import DenoiserConfig
from robopolicy.policy.heads.transformer import TransformerDenoiser
from robopolicy.policy.heads.unet import UNet1D


def build_denoiser(cfg: DenoiserConfig, action_dim: int, horizon: int, pooled_dim: int, token_dim: int) -> nn.Module:
    builders = {
        "unet": lambda: UNet1D(cfg, action_dim, horizon, cond_dim=pooled_dim),
        "transformer": lambda: TransformerDenoiser(cfg, action_dim, horizon, cond_token_dim=token_dim),
    }
    return builders[cfg.type]()
