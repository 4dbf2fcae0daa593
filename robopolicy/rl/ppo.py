"""Returns and advantages (GAE), the clipped PPO objective over denoising chains, the value network."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class ValueNet(nn.Module):
    """V(o) from the policy encoder's pooled vector (read, not trained, by the critic's loss)."""

    def __init__(self, pooled_dim: int, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(pooled_dim, hidden), nn.Mish(), nn.Linear(hidden, hidden), nn.Mish(),
                                 nn.Linear(hidden, 1))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.net(pooled.detach()).squeeze(-1)


def gae(rewards: np.ndarray, values: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Advantages and returns of one finished episode (decisions in order; no value after its end).

    An episode ends at success or at its step limit; both are treated as terminal (the sparse reward
    is all there is to predict, and a timed-out episode would not have succeeded later in evaluation).
    """
    advantages = np.zeros(len(rewards), np.float32)
    running = 0.0
    for t in reversed(range(len(rewards))):
        next_value = values[t + 1] if t + 1 < len(values) else 0.0
        delta = rewards[t] + gamma * next_value - values[t]
        running = delta + gamma * lam * running
        advantages[t] = running
    return advantages, advantages + np.asarray(values, np.float32)


def ppo_losses(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor, clip: float) -> dict:
    """The clipped surrogate (to minimize) and the diagnostics PPO stops on."""
    log_ratio = log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    with torch.no_grad():
        approx_kl = ((ratio - 1) - log_ratio).mean()
        clip_fraction = ((ratio - 1).abs() > clip).float().mean()
    return {"policy_loss": -surrogate.mean(), "ratio": ratio.detach(), "approx_kl": approx_kl,
            "clip_fraction": clip_fraction}
