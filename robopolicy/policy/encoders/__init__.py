"""Observation encoders, by the name `policy.encoder.type` gives them.

Every encoder subclasses `base.Encoder` and turns a normalized batch into a `Conditioning`. The
VLM encoder pulls in `transformers`, so entries are "module:class" strings resolved on first use.
"""

from __future__ import annotations

import importlib

ENCODERS = {
    "standard": "robopolicy.policy.encoders.observation:ObservationEncoder",
    "vlm": "robopolicy.policy.encoders.vlm:VLMEncoder",
}


def encoder_class(name: str) -> type:
    module, _, cls = ENCODERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
