"""ACT head: action chunking with a transformer and a CVAE latent (Zhao et al., 2023).

Training: a small transformer (the CVAE encoder) reads the ground-truth chunk and outputs a
Gaussian latent z that captures the demonstrator's "style"; the main transformer encoder reads
[z, observation tokens] and a decoder with one learned query per future step cross-attends to it
and regresses the whole chunk at once. Loss = L1 over real (unpadded) steps + kl_weight * KL(z).
Inference sets z to the prior mean (zero): one forward pass per chunk, no iterative sampling.
Padded observation tokens (`cond.mask` False) are masked in the encoder and in cross-attention.
"""

from __future__ import annotations

import torch
from torch import nn

from robopolicy.policy.config import PolicyConfig
from robopolicy.policy.encoders.base import Conditioning
from robopolicy.policy.heads.common import ActionHead, masked_mean


def _encoder(d: int, heads: int, ff: int, dropout: float, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d, heads, ff, dropout, activation="relu", batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


class ACTHead(ActionHead):
    supports_prefix = False  # one regression pass per chunk: nothing to inpaint
    default_action_norm = "mean_std"  # ACT regresses standardized actions (its authors' and LeRobot's choice)

    def __init__(self, cfg: PolicyConfig, action_dim: int, pooled_dim: int, token_dim: int):
        super().__init__()
        c = cfg.act
        self.cfg = c
        self.horizon = cfg.horizon
        self.action_dim = action_dim
        d = c.dim
        self.cond_proj = nn.Linear(token_dim, d) if token_dim != d else nn.Identity()
        if c.use_vae:
            self.vae_cls = nn.Parameter(torch.zeros(1, 1, d))
            self.vae_action = nn.Linear(action_dim, d)
            self.vae_position = nn.Parameter(torch.randn(1 + cfg.horizon, d) * 0.02)
            self.vae_encoder = _encoder(d, c.heads, c.ff_dim, c.dropout, c.vae_encoder_layers)
            self.vae_out = nn.Linear(d, 2 * c.latent_dim)
        self.latent_in = nn.Linear(c.latent_dim, d)
        self.latent_position = nn.Parameter(torch.randn(1, d) * 0.02)
        self.encoder = _encoder(d, c.heads, c.ff_dim, c.dropout, c.encoder_layers)
        self.queries = nn.Parameter(torch.randn(cfg.horizon, d) * 0.02)
        dec_layer = nn.TransformerDecoderLayer(d, c.heads, c.ff_dim, c.dropout, activation="relu", batch_first=True)
        self.decoder = nn.TransformerDecoder(dec_layer, c.decoder_layers)
        self.out = nn.Linear(d, action_dim)

    def inference_networks(self) -> list[nn.Module]:
        return [self.encoder, self.decoder]

    def _posterior(self, actions: torch.Tensor, is_pad: torch.Tensor | None):
        b = actions.shape[0]
        tokens = torch.cat([self.vae_cls.expand(b, -1, -1), self.vae_action(actions)], dim=1) + self.vae_position
        pad = None
        if is_pad is not None:
            pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=actions.device), is_pad], dim=1)
        h = self.vae_encoder(tokens, src_key_padding_mask=pad)[:, 0]
        mu, logvar = self.vae_out(h).float().chunk(2, dim=-1)
        return mu, logvar

    def _decode(self, cond: Conditioning, z: torch.Tensor) -> torch.Tensor:
        memory = self.cond_proj(cond.tokens)
        latent = (self.latent_in(z.to(memory.dtype)) + self.latent_position).unsqueeze(1)
        pad = cond.key_padding_mask
        if pad is not None:  # the latent token is always real
            pad = torch.cat([pad.new_zeros(pad.shape[0], 1), pad.to(memory.device)], dim=1)
        memory = self.encoder(torch.cat([latent, memory], dim=1), src_key_padding_mask=pad)
        queries = self.queries.unsqueeze(0).expand(memory.shape[0], -1, -1)
        return self.out(self.decoder(queries, memory, memory_key_padding_mask=pad)).float()

    def loss(self, cond: Conditioning, actions: torch.Tensor, is_pad: torch.Tensor | None = None) -> dict:
        b = actions.shape[0]
        if self.cfg.use_vae:
            mu, logvar = self._posterior(actions, is_pad)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()
        else:
            z = actions.new_zeros(b, self.cfg.latent_dim)
            kl = actions.new_zeros(())
        pred = self._decode(cond, z)
        l1 = masked_mean((pred - actions).abs(), is_pad)
        return {"loss": l1 + self.cfg.kl_weight * kl, "l1": l1.detach(), "kl": kl.detach()}

    @torch.no_grad()
    def sample(self, cond: Conditioning, steps: int | None = None, prefix: torch.Tensor | None = None,
               prefix_mask: torch.Tensor | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        z = cond.tokens.new_zeros(cond.batch_size, self.cfg.latent_dim, dtype=torch.float32)
        return self._decode(cond, z)
