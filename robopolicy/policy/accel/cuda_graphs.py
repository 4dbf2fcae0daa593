"""CUDA graphs for batch-1 chunks on a GPU.

On a GPU a batch-1 chunk is bound by kernel launches; capturing the networks a chunk runs as CUDA
graphs (torch.compile's "reduce-overhead" mode) replays each one with a single launch. The first
chunks after this call pay for compiling and recording. `nn.Module.compile` compiles a module in
place (its `state_dict` is untouched), so no stand-in is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from robopolicy.policy.policy import Policy


def capture(policy: "Policy") -> list[nn.Module]:
    """Compile the head's per-chunk networks, and the encoder where it captures well; returns them."""
    networks = list(policy.head.inference_networks())
    if policy.encoder.graph_capturable:
        networks.append(policy.encoder)
    for network in networks:
        network.compile(mode="reduce-overhead", dynamic=False)
    return networks
