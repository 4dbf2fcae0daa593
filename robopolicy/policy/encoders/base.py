"""The contract between encoders and heads."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Conditioning:
    """What an encoder hands to a head.

    tokens  (B, N, D): one token per (observation step, source) — cameras, state, language —
            for heads that attend (transformer denoiser, ACT).
    pooled  (B, P):    a fixed-size vector for heads that modulate (the U-Net's FiLM layers).
    """

    tokens: torch.Tensor
    pooled: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def repeat(self, n: int) -> "Conditioning":
        """Each sample repeated n times (several action samples per observation)."""
        return Conditioning(self.tokens.repeat_interleave(n, 0), self.pooled.repeat_interleave(n, 0))
