"""The contract between encoders and heads, and what an encoder declares about itself."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


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


class Encoder(nn.Module):
    """Base of observation encoders: `forward(normalized batch) -> Conditioning`.

    Subclasses set `dim` (token width) and `pooled_dim`, and override what differs from these
    defaults, so that the policy, trainer and accelerators ask instead of probing attributes:
      vision              the camera encoder (a module with `camera_encoders()`), or None
      graph_capturable    whether CUDA graphs may capture the whole encoder (a VLM backbone is
                          large, rarely launch-bound and captures poorly)
      bind_dataset(ds)    called once with the training dataset (the VLM encoder names its
                          feature cache after it)
      auxiliary_loss(cond, batch)
                          a training-only loss beside the head's (None: there is none)
    """

    graph_capturable: bool = True

    def __init__(self):
        super().__init__()
        self.vision: nn.Module | None = None  # an instance attribute: a class one would hide the submodule

    def bind_dataset(self, dataset) -> None:
        pass

    def auxiliary_loss(self, cond: Conditioning, batch: dict) -> torch.Tensor | None:
        return None
