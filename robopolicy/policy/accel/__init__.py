"""Inference accelerators: faster batch-1 chunks from the same weights, kept out of the model code.

A batch-1 chunk is hundreds of small operators, so its time is per-operator overhead rather than
arithmetic. Each accelerator here speeds up the networks a chunk runs by putting a stand-in module
in their place (`robopolicy.policy.accel.standin`): the stand-in adopts the original's parameters
under the same names, so `state_dict` and the checkpoint a policy saves are unchanged, and it runs
the network another way:

  cuda_graphs   on a GPU: the head's networks and the observation encoder captured as CUDA graphs
                (torch.compile "reduce-overhead"; compiled in place, no stand-in needed)
  onnx_cpu      on a CPU: camera encoders and the U-Net denoiser as ONNX Runtime sessions
  bf16_vision   on CPUs with bf16 units, opt-in: camera trunks in bf16, compiled by inductor

The model code (heads, encoders) knows nothing of them: whatever the exported form needs is
rewritten on an export-time copy inside the accelerator. Figures: bench/RESULTS.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from robopolicy.errors import ConfigError

if TYPE_CHECKING:
    from robopolicy.policy.policy import Policy


def compile_for_inference(policy: "Policy", vision_bf16: bool = False) -> None:
    """Accelerate `policy` for inference on its device (CUDA graphs on a GPU, ONNX Runtime on a CPU)."""
    policy.eval()
    if policy.device.type == "cpu":
        from robopolicy.policy.accel.onnx_cpu import compile_for_cpu

        if not compile_for_cpu(policy, vision_bf16=vision_bf16):
            raise ConfigError("nothing in this policy runs faster with ONNX Runtime (it has neither camera"
                              " encoders nor a U-Net denoiser); use it as it is")
        return
    if policy.device.type != "cuda":
        raise ConfigError(f"compiling for inference speeds up CUDA GPUs and CPUs; this policy is on {policy.device}")
    if vision_bf16:
        raise ConfigError("vision_bf16 is for CPUs; on a GPU, compile without it (CUDA graphs keep fp32)")
    from robopolicy.policy.accel.cuda_graphs import capture

    capture(policy)
