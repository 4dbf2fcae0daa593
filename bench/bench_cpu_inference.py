"""Where a CPU chunk's time goes, and what the usual inference tricks change (the latency targets).

  python bench/bench_cpu_inference.py [--variants eager,inductor_freezing,onnxruntime,onnxruntime_bf16_vision] [--repeats 15]

Same workload as `bench_policy.py`'s latency half (LeRobot Lift fixture, 2 frames x 2 cameras,
ResNet-18-GN shared + U-Net 64/128/256, batch 1, 2 threads). For each variant it prints the
observation encoder alone, one U-Net denoising step alone, whole chunks (flow-1/2/10, DDIM-10) and
ACT's chunk (one frame, its transformer left as it is):
- eager: the policy as `Policy.load` gives it (fp32);
- inductor_freezing: `torch.compile` of the encoder and the denoiser with inductor's freezing
  (constant-folded, pre-packed weights; CPU C++ kernels with fused element-wise operators). The
  first calls compile (minutes on 2 cores) and are not counted;
- onnxruntime: `Policy.compile_for_inference()` on a CPU — the camera encoder and the U-Net run as
  ONNX Runtime sessions (robopolicy.policy.accel.onnx_cpu), the rest of the chunk in PyTorch;
- onnxruntime_bf16_vision: `Policy.compile_for_inference(vision_bf16=True)` — the U-Net as above,
  the ResNet trunk as a bf16, channels_last copy (oneDNN's AMX / AVX512-BF16 convolutions).
Every variant is built first, then each figure is timed round-robin across the variants (one call
of each in turn), so a shared machine's drift over the run weighs on all of them alike.
"""

from __future__ import annotations

import argparse
import os

import torch

from bench_policy import FIXTURE, build, chunk_call, encoder_call, fixture_observation, normalized_observation
from benchlib import interleaved_median_ms, machine
from robopolicy.data.dataset import LeRobotDataset

VARIANTS = ("eager", "inductor_freezing", "onnxruntime", "onnxruntime_bf16_vision")


def prepare(policy, variant: str, denoiser: bool = True):
    if variant == "inductor_freezing":
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        policy.encoder.compile(dynamic=False)
        if denoiser:
            policy.head.denoiser.compile(dynamic=False)
    elif variant == "onnxruntime":
        policy.compile_for_inference()
    elif variant == "onnxruntime_bf16_vision":
        policy.compile_for_inference(vision_bf16=True)
    return policy.eval()


def step_call(policy, obs):
    """One U-Net denoising step alone, on this observation's conditioning."""
    net = policy.head.denoiser
    with torch.inference_mode():
        cond = policy.encoder(normalized_observation(policy, obs))
        prepared = net.prepare(cond)
    x = torch.randn(1, policy.config.horizon, policy.spec.action_dim)
    t = torch.full((1,), 500.0)

    def call():
        with torch.inference_mode():
            net(x, t, cond, prepared=prepared)
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {', '.join(unknown)}: choose from {', '.join(VARIANTS)}")
    torch.set_num_threads(args.threads)
    ds = LeRobotDataset(FIXTURE)
    ds.frame_cache.warm()
    obs = fixture_observation(ds)
    act_obs = {k: v[-1:] for k, v in obs.items()}
    print(f"machine: {machine()}, torch {torch.__version__}, threads {args.threads}")
    cpu = torch.device("cpu")
    reference = build("fixture_lift_flow.yaml", [], ds, cpu).eval()
    expected = reference.predict_chunk(obs, steps=10, generator=torch.Generator().manual_seed(0))
    figures: dict[str, dict] = {}  # figure -> variant -> call
    errors = {}
    for variant in variants:
        flow = prepare(build("fixture_lift_flow.yaml", [], ds, cpu), variant)
        diffusion = prepare(build("fixture_lift_diffusion.yaml", ["policy.diffusion.scheduler=ddim"], ds, cpu), variant)
        act = prepare(build("fixture_lift_act.yaml", [], ds, cpu), variant, denoiser=False)
        chunk = flow.predict_chunk(obs, steps=10, generator=torch.Generator().manual_seed(0))
        errors[variant] = float(abs(chunk - expected).max())
        calls = {"encoder": encoder_call(flow, obs), "U-Net step": step_call(flow, obs)}
        calls.update({f"flow-{s}": chunk_call(flow, obs, s) for s in (1, 2, 10)})
        calls["DDIM-10"] = chunk_call(diffusion, obs, 10)
        calls["ACT"] = chunk_call(act, act_obs, None)
        for name, call in calls.items():
            figures.setdefault(name, {})[variant] = call
    results = {name: interleaved_median_ms(calls, 3 * args.repeats if name == "U-Net step" else args.repeats, warmup=3)
               for name, calls in figures.items()}
    for variant in variants:
        print(f"{variant:<24} " + ", ".join(f"{name} {results[name][variant]:6.2f} ms" for name in figures)
              + f" | flow-10 chunk vs eager fp32: max diff {errors[variant]:.1e}")


if __name__ == "__main__":
    main()
