"""Batch-1 CPU inference through ONNX Runtime: the camera encoders and the U-Net denoiser.

Why: on a CPU a batch-1 chunk is bound by per-operator overhead, not arithmetic. One U-Net step is
~250 small PyTorch operators over 5.8M weights, and PyTorch runs a batch-1 `Conv1d` through its
im2col fallback; `torch.compile` (inductor, even with freezing) measured little better. ONNX
Runtime runs the same graph as one session with fused element-wise kernels and MLAS convolutions,
faster for both the U-Net step and the camera encoders (figures: bench/RESULTS.md and
`bench/bench_cpu_inference.py`). Three rewrites at export time only (same weights, same results):
the U-Net's 1-D convolutions become 1 x k 2-D ones, which ONNX Runtime runs in its blocked (NCHWc)
layout, faster for batch-1 signals of 4-16 steps than its 1-D path; the exported U-Net carries its
signal as (B, C, 1, H) from input to output (its residual blocks broadcast FiLM over both trailing
axes), so no convolution needs a reshape around it; and GroupNorm (U-Net and ResNet-GN alike)
reshapes with only the batch axis inferred, so the graph needs no Shape node per normalization. At
inference batch 1 the U-Net runs on one thread (`SessionCall`).

How: each network is exported once with `torch.onnx.export` (the dynamo exporter, batch axis
dynamic) from an export-time copy carrying the rewrites above, and a stand-in module
(`robopolicy.policy.accel.standin`) takes its place in the policy: same parameters under the same
names, `forward` a call into an ONNX Runtime session. Everything around the networks —
normalization, cropping, the text encoder, schedulers, prefixes — stays in PyTorch and unchanged,
so a compiled policy returns the same chunks as the eager one (to float32 rounding, ~1e-6).
Networks exported: every camera encoder (ResNet-18 or the small CNN, with keypoints and projection)
and the U-Net denoiser. The transformer denoiser, ACT's transformers and VLM backbones stay in
PyTorch: they are a few large matrix products, which PyTorch already runs well.
"""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map

from robopolicy.errors import ConfigError
from robopolicy.policy.accel.standin import StandIn, swap_modules
from robopolicy.policy.encoders.base import Conditioning
from robopolicy.policy.encoders.vision import CameraEncoder
from robopolicy.policy.heads.unet import FiLMResidualBlock, PreparedFiLM, UNet1D

if TYPE_CHECKING:
    from robopolicy.policy.policy import Policy

INSTALL_HINT = "pip install 'robopolicy[onnx]'"
# U-Net batches up to this size run on one thread (SessionCall): batch 1 and 2 measured faster so
# on the 2-core benchmark machine, alone and inside chunks; from batch 4 two threads win
UNET_SERIAL_BATCH = 2


def _require_onnxruntime():
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (the exporter needs it)
    except ImportError as err:
        raise ConfigError(f"compiling for CPU inference needs ONNX Runtime and onnxscript ({err.name} is missing):"
                          f" {INSTALL_HINT}") from None
    return onnxruntime


def export_model(module: nn.Module, example: Sequence) -> bytes:
    """`module(*example)` as an ONNX model (the first axis of every input dynamic)."""
    batch = torch.export.Dim("batch", min=1, max=4096)
    dynamic = tree_map(lambda _: {0: batch}, tuple(example))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, tuple(example), dynamo=True, optimize=True, verbose=False,
                                    dynamic_shapes=dynamic, report=False)
    return program.model_proto.SerializeToString()


class SessionCall:
    """Tensors in, tensors out of an ONNX Runtime session (float32, CPU).

    The session's thread count follows `torch.get_num_threads()` at each call (one session per
    count, made on first use), so a cap set for PyTorch — the deployment runtime leaves one core
    to the control loop — holds for ONNX Runtime too. A network whose small batches run faster
    on one thread gives `serial_up_to`: batches of at most that many rows run on the calling
    thread alone. (The batch-1 U-Net step: a few hundred tiny nodes, each of which would hand half
    its work to a worker thread, and that worker competes for its core with PyTorch's OpenMP
    threads, which spin for a while after the camera encoder; one thread measured faster, alone and
    inside chunks: bench/notes/latency-and-training.md.)
    """

    def __init__(self, model: bytes, serial_up_to: int = 0):
        self.model = model
        self.serial_up_to = serial_up_to
        self.sessions: dict[int, object] = {}
        self.names = [i.name for i in self.session(self.threads_for(1)).get_inputs()]  # the deployed batch size

    def session(self, threads: int):
        if threads not in self.sessions:
            ort = _require_onnxruntime()
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            # idle workers would spin on the cores PyTorch's own threads run the rest of the chunk on
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            self.sessions[threads] = ort.InferenceSession(self.model, options, providers=["CPUExecutionProvider"])
        return self.sessions[threads]

    def threads_for(self, rows: int) -> int:
        return 1 if rows <= self.serial_up_to else torch.get_num_threads()

    def __call__(self, *inputs) -> torch.Tensor:
        """`inputs` as the exported module took them (tensors, or lists of tensors)."""
        tensors = tree_leaves(inputs)
        feed = {name: np.ascontiguousarray(x.detach().to(torch.float32).numpy())
                for name, x in zip(self.names, tensors)}
        return torch.from_numpy(self.session(self.threads_for(tensors[0].shape[0])).run(None, feed)[0])


def _conv1d_as_2d(conv: nn.Conv1d | nn.ConvTranspose1d) -> nn.Conv2d | nn.ConvTranspose2d:
    """The same convolution over time for a signal laid out as (B, C, 1, H): a 1 x k 2-D convolution."""
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"only zero-padded convolutions with numeric padding are exported as 2-D: {conv}")
    common = dict(kernel_size=(1, conv.kernel_size[0]), stride=(1, conv.stride[0]), padding=(0, conv.padding[0]),
                  dilation=(1, conv.dilation[0]), groups=conv.groups, bias=conv.bias is not None)
    if isinstance(conv, nn.ConvTranspose1d):
        out = nn.ConvTranspose2d(conv.in_channels, conv.out_channels, output_padding=(0, conv.output_padding[0]),
                                 **common)
    else:
        out = nn.Conv2d(conv.in_channels, conv.out_channels, **common)
    with torch.no_grad():
        out.weight.copy_(conv.weight.unsqueeze(2))
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out


class _GroupNormStaticShape(nn.Module):
    """GroupNorm written as reshape -> instance norm -> reshape with only the batch axis inferred."""

    def __init__(self, norm: nn.GroupNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, shape = self.norm, x.shape[1:]
        grouped = F.instance_norm(x.reshape(-1, n.num_groups, shape.numel() // n.num_groups), eps=n.eps)
        y = grouped.reshape(-1, *shape)
        if n.affine:
            trailing = (1,) * (len(shape) - 1)
            y = y * n.weight.view(-1, *trailing) + n.bias.view(-1, *trailing)
        return y


class _FiLMBlockOn2d(nn.Module):
    """A U-Net residual block for signals laid out as (B, C, 1, H): its FiLM broadcast over both trailing axes."""

    def __init__(self, block: FiLMResidualBlock):
        super().__init__()
        self.first, self.second, self.film, self.skip = block.first, block.second, block.film, block.skip

    def forward(self, x: torch.Tensor, film: torch.Tensor) -> torch.Tensor:
        scale, shift = film[:, :, None, None].chunk(2, dim=1)
        return self.second(self.first(x) * scale + shift) + self.skip(x)


def _for_export(module: nn.Module) -> nn.Module:
    """A copy of `module` with the export-time rewrites above (the copy is only exported).

    Its 1-D convolutions and U-Net blocks take (B, C, 1, H) signals afterwards (see `_UNetSteps`).
    """
    module = copy.deepcopy(module)
    swap_modules(module, FiLMResidualBlock, _FiLMBlockOn2d)  # first: it keeps the block's layers, swapped next
    swap_modules(module, (nn.Conv1d, nn.ConvTranspose1d), _conv1d_as_2d)
    swap_modules(module, nn.GroupNorm, _GroupNormStaticShape)
    return module


class _UNetSteps(nn.Module):
    """The exported form of a U-Net step: tensors only (noisy actions, time, the FiLMs' observation halves)."""

    def __init__(self, net: UNet1D):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor, t: torch.Tensor, observation: torch.Tensor) -> torch.Tensor:
        pooled = observation.new_zeros(x.shape[0], 1)  # only its dtype is read when `prepared` is given
        time_weight = torch.cat([f.weight[:, :self.net.time_dim] for f in self.net.film_layers()])  # folded in
        films = self.net.films(t, Conditioning(tokens=pooled[:, None], pooled=pooled),
                               PreparedFiLM(observation, time_weight))
        # (B, H, A) -> (B, A, 1, H) once, for the 2-D convolutions (see `_for_export`)
        h = self.net.denoise(x.transpose(1, 2).unsqueeze(2), films)
        return h.squeeze(2).transpose(1, 2)


class OnnxUNet(StandIn):
    """A U-Net denoiser whose steps run in ONNX Runtime; `prepare` stacks the FiLMs' observation halves once."""

    def __init__(self, net: UNet1D, horizon: int, action_dim: int):
        super().__init__(net, "U-Net denoiser", "ONNX Runtime")
        layers = net.film_layers()
        # the weights are frozen from here on: the observation halves of all FiLMs in one product
        self.film_observation = (torch.cat([f.weight[:, net.time_dim:] for f in layers]).detach(),
                                             torch.cat([f.bias for f in layers]).detach())
        pooled = next(net.parameters()).new_zeros(1, layers[0].in_features - net.time_dim)
        with torch.no_grad():
            observation = self.prepare(Conditioning(tokens=pooled[:, None], pooled=pooled)).observation
        # batch 2, not 1: the exporter would fix an axis of size 1 as a constant
        example = (torch.zeros(2, horizon, action_dim), torch.full((2,), 500.0), observation.expand(2, -1).contiguous())
        self.call = SessionCall(export_model(_UNetSteps(_for_export(net)).eval(), example),
                                serial_up_to=UNET_SERIAL_BATCH)

    def prepare(self, cond: Conditioning) -> PreparedFiLM:
        weight, bias = self.film_observation
        return PreparedFiLM(F.linear(F.mish(cond.pooled), weight, bias), time_weight=None)  # time: in the graph

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                prepared: PreparedFiLM | None = None) -> torch.Tensor:
        self.check_inference()
        if prepared is None:
            prepared = self.prepare(cond)
        return self.call(x, t.to(torch.float32).reshape(-1).expand(x.shape[0]), prepared.observation)


class OnnxCameraEncoder(StandIn):
    """A camera encoder (trunk + keypoints + projection, + its instruction FiLM) run by ONNX Runtime."""

    def __init__(self, encoder: CameraEncoder, crop_hw: tuple[int, int]):
        super().__init__(encoder, "camera encoder", "ONNX Runtime")
        example = (torch.rand(2, 3, *crop_hw),)
        if encoder.film is not None:
            example += (torch.rand(2, encoder.film.map.in_features),)
        self.call = SessionCall(export_model(_for_export(encoder).eval(), example))

    def forward(self, images: torch.Tensor, instruction: torch.Tensor | None = None) -> torch.Tensor:
        self.check_inference()
        return self.call(images) if self.film is None else self.call(images, instruction)


def compile_for_cpu(policy: "Policy", vision_bf16: bool = False) -> list[StandIn]:
    """Put ONNX Runtime stand-ins in the place of the policy's camera encoders and U-Net; returns them.

    With `vision_bf16` the camera encoders get bf16 trunks in PyTorch instead (robopolicy.policy.accel.bf16_vision).
    """
    vision = policy.encoder.vision
    cameras: list[StandIn] = []
    if vision is not None:
        if vision_bf16:
            from robopolicy.policy.accel.bf16_vision import Bf16CameraEncoder

            cameras = swap_modules(vision, CameraEncoder, lambda c: Bf16CameraEncoder(c, vision.crop_hw))
        elif any(isinstance(m, CameraEncoder) for m in vision.modules()):
            _require_onnxruntime()
            cameras = swap_modules(vision, CameraEncoder, lambda c: OnnxCameraEncoder(c, vision.crop_hw))
    head = policy.head
    if any(isinstance(m, UNet1D) for m in head.modules()):
        _require_onnxruntime()
        return cameras + swap_modules(head, UNet1D, lambda net: OnnxUNet(net, head.horizon, head.action_dim))
    return cameras
