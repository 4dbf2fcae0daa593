"""Action heads: diffusion, flow matching and ACT, all consuming a `Conditioning`.

Every head implements
    loss(cond, actions, is_pad) -> dict with "loss" (and parts for logging)
    sample(cond, steps=None, prefix=None, prefix_mask=None, generator=None) -> actions (B, H, A)
on normalized actions. `prefix` (B, H, A) with `prefix_mask` (B, H) fixes actions that are already
committed (real-time chunking / inpainting); ACT predicts in one pass and ignores it.
`generator` is a torch generator or a list of one per batch row (diffusers' `randn_tensor` draws
each row from its own).
"""

from robopolicy.policy.heads.act import ACTHead
from robopolicy.policy.heads.diffusion import DiffusionHead
from robopolicy.policy.heads.flow import FlowHead

HEADS = {"diffusion": DiffusionHead, "flow": FlowHead, "act": ACTHead}
