"""The standard observation encoder: cameras + proprioception (+ task string) -> Conditioning.

Token layout, for each observation step t (oldest first): each camera's tokens (one, or one per
feature-map cell with `vision.tokens: feature_map`), then one token
for the concatenated low-dim state; then, once, a language token. A learned embedding per token
position tells attention-based heads which token is which. `pooled` is all tokens flattened — the
global conditioning vector diffusion_policy feeds to its U-Net.

Instructions are centred before the network sees them. Sentence embeddings of "put the red cube
in the bowl" and "put the blue cube in the bowl" are nearly the same vector (cosine ~0.86); what
tells the tasks apart is a small difference on top of a large shared part, which a network fed
the raw vectors sees as almost a constant. So, like state normalization, the embedding of the
dataset's instructions is centred on their mean and scaled so that each of its 384 coordinates
has unit RMS, the magnitude of a normalized state feature. (Scaled to unit *length* instead, the
instruction reached the first layer ~20x weaker than the state and trained that much slower:
on the tabletop task a policy fed unit-length instructions picked the wrong cube for thousands of
steps.) With one instruction the language token is constant, as it should be. The statistics
come from the instructions in the spec, so they are rebuilt, not stored, on load.

The language token also enters the state MLP; with `vision.language_film` the normalized
instruction vector also conditions the camera encoders (robopolicy.policy.encoders.vision), where
it selects what the keypoints look at. With `state_language_film` it also scales and shifts the state
MLP's hidden units (FiLM, zero-initialized so training starts from the plain MLP): when the state
lists several objects and only the instruction says which one matters, the MLP must pick that
object's coordinates, a product of instruction and state; concatenating the instruction lets one
hidden layer form it only approximately, FiLM forms it directly.

With `auxiliary_state_keys` the camera tokens of each observation step must also predict those
features (a linear read-out, normalized targets, mean squared error added to the head's loss). A
policy from cameras learns where the objects are only through the action loss, a weak and noisy
signal for it; simulated demonstrations record the objects' positions, and regressing them is the
direct one. The targets are training-only: the read-out is never used at inference.
"""

from __future__ import annotations

import torch
from torch import nn

from robopolicy.policy.config import PolicySpec
from robopolicy.policy.encoders.base import Conditioning, Encoder
from robopolicy.policy.encoders.film import film_mlp, zero_film
from robopolicy.policy.encoders.text import EMBED_DIM, TextEncoder
from robopolicy.policy.encoders.vision import VisionEncoder


class ObservationEncoder(Encoder):
    def __init__(self, spec: PolicySpec):
        super().__init__()
        cfg = spec.config
        enc = cfg.encoder
        self.dim = enc.dim
        self.n_obs_steps = cfg.n_obs_steps
        self.camera_keys = spec.keys("camera")
        self.state_keys = spec.keys("state")
        self.vision = None
        if self.camera_keys:
            h, w, _ = spec.shape(self.camera_keys[0])
            for key in self.camera_keys[1:]:
                if spec.shape(key)[:2] != [h, w]:
                    raise ValueError(f"all cameras must share one size; {key} is {spec.shape(key)}, "
                                     f"{self.camera_keys[0]} is {[h, w]}")
            self.vision = VisionEncoder(enc.vision, self.camera_keys, (h, w), enc.dim,
                                        instruction_dim=EMBED_DIM if enc.language else 0)
        self.vision_language_film = self.vision is not None and enc.vision.language_film
        self.camera_tokens = 0 if self.vision is None else len(self.camera_keys) * self.vision.tokens_per_image
        self.auxiliary_keys = spec.keys("auxiliary")
        self.auxiliary_readout = None
        if self.auxiliary_keys:
            if self.vision is None:
                raise ValueError("encoder.auxiliary_state_keys are predicted from the camera tokens: the policy has"
                                 " no cameras")
            self.auxiliary_readout = nn.Linear(self.camera_tokens * enc.dim,
                                               sum(spec.input_dim(k) for k in self.auxiliary_keys))
        state_dim = sum(spec.input_dim(k) for k in self.state_keys)
        self.text = TextEncoder() if enc.language else None
        self.language = nn.Linear(EMBED_DIM, enc.dim) if enc.language else None
        # with an instruction, the state MLP sees it too: "which object matters" is a product of
        # language and state, which the heads' FiLM (linear in each token) cannot form on its own
        state_in, hidden = (state_dim + enc.dim, 4 * enc.dim) if enc.language else (state_dim, enc.dim)
        self.state = (nn.Sequential(nn.Linear(state_in, hidden), nn.Mish(), nn.Linear(hidden, enc.dim))
                      if state_dim else None)
        self.state_film = zero_film(EMBED_DIM, hidden) if enc.state_language_film and self.state is not None else None
        if self.text is not None:
            center, scale = self._instruction_statistics(list(spec.tasks))
            self.register_buffer("instruction_center", center, persistent=False)
            self.register_buffer("instruction_scale", scale, persistent=False)
        self.tokens_per_step = per_step = self.camera_tokens + (1 if self.state is not None else 0)
        if per_step == 0 and self.text is None:
            raise ValueError("the encoder has no inputs: give it cameras, state keys or language")
        self.num_tokens = per_step * self.n_obs_steps + (1 if self.text is not None else 0)
        self.position = nn.Parameter(torch.randn(self.num_tokens, enc.dim) * 0.02)

    def _instruction_statistics(self, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if not tasks:
            return torch.zeros(EMBED_DIM), torch.ones(())
        emb = self.text(tasks)
        center = emb.mean(0)
        rms = (emb - center).pow(2).mean().sqrt()  # per coordinate, over instructions and coordinates
        return center, (1.0 / rms if rms > 1e-8 else torch.zeros(()))

    @property
    def pooled_dim(self) -> int:
        return self.num_tokens * self.dim

    def forward(self, batch: dict) -> Conditioning:
        """`batch` holds normalized state (B, T, D) and images (B, T, 3, H, W) in [0, 1]."""
        parts = []
        lang = emb = None
        if self.text is not None:
            emb = self.text(list(batch["task"])).to(self.position.device)
            emb = (emb - self.instruction_center) * self.instruction_scale
            lang = self.language(emb).unsqueeze(1)  # (B, 1, dim)
        if self.vision is not None:
            parts.append(self.vision({k: batch[k] for k in self.camera_keys},  # (B, T, camera_tokens, dim)
                                     emb if self.vision_language_film else None))
        if self.state is not None:
            state = torch.cat([batch[k] for k in self.state_keys], dim=-1)
            if lang is not None:
                state = torch.cat([state, lang.to(state.dtype).expand(-1, state.shape[1], -1)], dim=-1)
            parts.append(film_mlp(self.state, self.state_film, state, emb).unsqueeze(2))  # (B, T, 1, dim)
        tokens = torch.cat(parts, dim=2).flatten(1, 2) if parts else None
        if lang is not None:
            tokens = lang if tokens is None else torch.cat([tokens, lang.to(tokens.dtype)], dim=1)
        tokens = tokens + self.position.to(tokens.dtype)
        return Conditioning(tokens=tokens, pooled=tokens.flatten(1))

    def auxiliary_loss(self, cond: Conditioning, batch: dict) -> torch.Tensor | None:
        """Mean squared error of the camera tokens' read-out of the (normalized) auxiliary targets.

        None without targets, or when the batch lacks them (scoring a policy on observations and
        actions alone).
        """
        if self.auxiliary_readout is None or any(k not in batch for k in self.auxiliary_keys):
            return None
        per_step, b = self.tokens_per_step, cond.tokens.shape[0]
        steps = cond.tokens[:, :per_step * self.n_obs_steps].reshape(b, self.n_obs_steps, per_step, self.dim)
        predicted = self.auxiliary_readout(steps[:, :, :self.camera_tokens].flatten(2).float())
        target = torch.cat([batch[k] for k in self.auxiliary_keys], dim=-1).to(predicted.dtype)
        return (predicted - target).pow(2).mean()
