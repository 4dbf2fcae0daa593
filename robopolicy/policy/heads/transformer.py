"""Transformer denoiser: action tokens attend to the observation tokens (cross-attention).

Unlike the U-Net, which only sees a pooled vector, this network reads every conditioning token,
which is what a language-model backbone provides; it is also the "action expert" of pi0-style
VLAs. The noise level is added to every action token and also given as an extra memory token.
Padded observation tokens (`cond.mask` False) are excluded from cross-attention.
"""

from __future__ import annotations

import torch
from torch import nn

from robopolicy.policy.config import DenoiserConfig
from robopolicy.policy.encoders.base import Conditioning
from robopolicy.policy.heads.common import SinusoidalEmbedding


class TransformerDenoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig, action_dim: int, horizon: int, cond_token_dim: int):
        super().__init__()
        d = cfg.transformer_dim
        self.embed = nn.Linear(action_dim, d)
        self.position = nn.Parameter(torch.randn(horizon, d) * 0.02)
        self.time = nn.Sequential(SinusoidalEmbedding(d), nn.Linear(d, d), nn.Mish(), nn.Linear(d, d))
        self.memory = nn.Linear(cond_token_dim, d) if cond_token_dim != d else nn.Identity()
        layer = nn.TransformerDecoderLayer(d, cfg.transformer_heads, dim_feedforward=4 * d, dropout=cfg.dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, cfg.transformer_layers)
        self.out = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, action_dim))

    def prepare(self, cond: Conditioning) -> torch.Tensor:
        """Observation tokens projected to the model width: the same at every denoising step."""
        return self.memory(cond.tokens)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                prepared: torch.Tensor | None = None) -> torch.Tensor:
        time = self.time(t).to(x.dtype)  # (B, d)
        queries = self.embed(x) + self.position + time[:, None, :]
        tokens = prepared if prepared is not None else self.prepare(cond)
        memory = torch.cat([tokens, time[:, None, :].to(tokens.dtype)], dim=1)
        pad = cond.key_padding_mask
        if pad is not None:  # the time token is always real
            pad = torch.cat([pad.to(memory.device), pad.new_zeros(pad.shape[0], 1)], dim=1)
        return self.out(self.decoder(queries, memory, memory_key_padding_mask=pad))
