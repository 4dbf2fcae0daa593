"""Stand-in modules: an accelerated network in the place of the original, same weights, same names.

An accelerator must not change what a policy is (its parameters, their names, the checkpoint it
saves) — only how a network runs. A `StandIn` adopts the original module's parameters, buffers and
submodules under the same names, so `state_dict`, `load_state_dict`, `.to()` and `Policy.save` see
no difference, and reads any attribute it does not define from the original (a camera encoder's
`film`, a U-Net's `time_dim`). It runs for inference only: `forward` in training mode is an error.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from robopolicy.errors import ConfigError


class StandIn(nn.Module):
    """Base of accelerated modules; subclasses implement `forward` and call `check_inference` first."""

    def __init__(self, original: nn.Module, what: str, how: str):
        super().__init__()
        self._modules.update(original._modules)
        self._parameters.update(original._parameters)
        self._buffers.update(original._buffers)
        self._non_persistent_buffers_set.update(original._non_persistent_buffers_set)
        self.__dict__["original"] = original  # not a submodule: its weights are already ours
        self.what, self.how = what, how
        self.training = original.training

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            original = self.__dict__.get("original")
            if original is None:
                raise
            return getattr(original, name)

    def check_inference(self) -> None:
        if self.training:
            raise ConfigError(f"the {self.what} was compiled for inference with {self.how}; it cannot train")


def swap_modules(root: nn.Module, kind: type | tuple[type, ...], make: Callable[[nn.Module], nn.Module]) -> list:
    """Put `make(m)` in the place of every submodule `m` of `root` that is a `kind`; returns the new modules."""
    swapped = []
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, kind):
                standin = make(child)
                setattr(parent, name, standin)
                swapped.append(standin)
    return swapped
