"""An MLP whose hidden units the instruction scales and shifts (FiLM, Perez et al., 2018).

Where an input lists several objects (a low-dim state with every cube's position, or keypoints on
every cube) and only the instruction says which one matters, the network must form a product of
instruction and input. A plain MLP fed both side by side approximates that product slowly; FiLM of
its hidden layer forms it directly. The FiLM map starts at zero, so a conditioned MLP begins as the
plain one.
"""

from __future__ import annotations

import torch
from torch import nn


def zero_film(instruction_dim: int, hidden: int) -> nn.Linear:
    """instruction (N, instruction_dim) -> (scale, shift) for `hidden` units, zero at initialization."""
    film = nn.Linear(instruction_dim, 2 * hidden)
    nn.init.zeros_(film.weight)
    nn.init.zeros_(film.bias)
    return film


def modulate(x: torch.Tensor, film: nn.Linear, instruction: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """x * (1 + scale) + shift, with (scale, shift) = film(instruction) (N, 2C) laid along x's `channel_dim`
    (of size C) and shared by every other position of x's sample."""
    scale, shift = film(instruction).to(x.dtype).chunk(2, dim=-1)
    shape = [1] * x.dim()
    shape[0], shape[channel_dim] = scale.shape
    return x * (1 + scale.view(shape)) + shift.view(shape)


def film_mlp(mlp: nn.Sequential, film: nn.Linear | None, x: torch.Tensor,
             instruction: torch.Tensor | None) -> torch.Tensor:
    """`mlp` = (linear, activation, linear) on x (N, ..., D); with `film`, its hidden units are scaled and
    shifted by the instruction (N, instruction_dim), the same for every position of x's middle axes."""
    if film is None:
        return mlp(x)
    return mlp[2](mlp[1](modulate(mlp[0](x), film, instruction, channel_dim=-1)))
