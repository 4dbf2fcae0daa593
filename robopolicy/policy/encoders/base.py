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
    mask    (B, N) bool or None: True = a real token, False = padding that attention must skip.
            Encoders whose token count varies per sample (a VLM's prompt) pad to the longest and
            set it; None means every token is real.
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    mask: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.tokens.shape[0]

    def repeat(self, n: int) -> "Conditioning":
        """Each sample repeated n times (several action samples per observation)."""
        mask = None if self.mask is None else self.mask.repeat_interleave(n, 0)
        return Conditioning(self.tokens.repeat_interleave(n, 0), self.pooled.repeat_interleave(n, 0), mask)

    @property
    def key_padding_mask(self) -> torch.Tensor | None:
        """(B, N) bool, True = ignore: the convention of torch.nn attention layers (None if no padding)."""
        return None if self.mask is None else ~self.mask.bool()
