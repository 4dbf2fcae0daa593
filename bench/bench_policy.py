"""Training throughput and chunk latency on the LeRobot Lift fixture, the workload LeRobot was measured on.

  python bench/bench_policy.py [--steps 8] [--skip-train] [--skip-latency] [--device cuda] [--compile [bf16-vision]] [--batch-size 32]

Training: 2 cameras at 84x84, 2 observation frames, horizon 16, batch 32, one optimizer step
(forward, backward, AdamW, EMA) per iteration; the "small" diffusion shape (one ResNet-18-GroupNorm
shared by both cameras + U-Net 64/128/256) and ACT (dim 256), fp32 vs bf16 autocast.
Latency: one `predict_chunk` from a single observation (2 frames x 2 cameras + state), batch 1,
median of repeated calls, for diffusion DDPM-100 / DDIM-10, flow 1 / 2 / 4 / 10 steps, and ACT.
On a GPU (`--device cuda`) each timed call ends with a device synchronize, so the figures are wall
times of finished work, not of queued kernels. `--compile` times latency after
`Policy.compile_for_inference()`: CUDA graphs on a GPU (after uncounted calls that compile and record
them), ONNX Runtime for the camera encoder and U-Net on a CPU; `--compile bf16-vision` with the
camera trunks in bf16 instead (`compile_for_inference(vision_bf16=True)`, CPUs with AMX / AVX512-BF16).
LeRobot's own figures on the same machine: `bench/bench_lerobot.py`.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time
from pathlib import Path

import numpy as np
import torch

from benchlib import median_ms
from robopolicy.config import load_config
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.windows import BatchLoader, WindowedDataset, WindowSpec
from robopolicy.policy.policy import Policy
from robopolicy.train.trainer import to_device

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO.parent / "shared" / "fixtures" / "lerobot_lift_v3"
LEROBOT = {"train_diffusion_ms": 1800, "train_act_ms": 875, "ddpm100_ms": 748, "ddim10_ms": 83.6, "act_ms": 40.4}


def build(config: str, overrides: list[str], ds, device: torch.device, compiled: str | None = None) -> Policy:
    cfg = load_config(REPO / "configs" / config, [f"data.path={FIXTURE}", *overrides])
    torch.manual_seed(0)
    policy = Policy.from_dataset(cfg.policy, ds).to(device)
    return policy.compile_for_inference(vision_bf16=compiled == "bf16-vision") if compiled else policy


def fixture_observation(ds, row: int = 100) -> dict:
    """One two-frame observation (state + both cameras at frames row-1, row) as a robot would send it."""
    obs = {"observation.state": ds.columns["observation.state"][row - 1:row + 1]}
    obs.update({k: ds.frames(k, [row - 1, row]) for k in ds.camera_keys})
    return obs


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_speed(policy: Policy, ds, precision: str, steps: int, batch_size: int = 32) -> float:
    """Milliseconds per optimizer step (median), the trainer's exact step."""
    from diffusers.training_utils import EMAModel

    pc, device = policy.config, policy.device
    windows = WindowedDataset(ds, WindowSpec(pc.n_obs_steps, pc.horizon, pc.first_action_offset)
                              .deltas(policy.observation_keys))
    loader = BatchLoader(windows, batch_size=batch_size, seed=0)
    bf16 = precision == "bf16"
    if bf16 and policy.encoder.vision is not None:
        policy.encoder.vision.to(memory_format=torch.channels_last)
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    ema = EMAModel(params, use_ema_warmup=True, power=0.75, foreach=True)
    policy.train()
    times = []
    for step, batch in enumerate(loader.iterate(0, steps + 2)):
        batch = to_device(batch, device)
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = policy(batch)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 10.0)
        opt.step()
        ema.step(params)
        synchronize(device)
        if step >= 2:  # the first steps pay for kernel selection and allocation
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def chunk_call(policy: Policy, observation: dict, steps: int | None):
    """One timed unit of latency: a `predict_chunk` from `observation` (fixed-seed noise)."""
    policy.eval()
    gen = torch.Generator().manual_seed(0)
    return lambda: policy.predict_chunk(observation, steps=steps, generator=gen)


def normalized_observation(policy: Policy, observation: dict) -> dict:
    """`observation` as the encoder reads it: a batch of 1, normalized."""
    with torch.inference_mode():
        return policy.normalizer.normalize_batch(policy.observation_batch(observation))


def encoder_call(policy: Policy, observation: dict):
    """The observation encoder alone on one normalized observation (the device synchronized)."""
    normalized = normalized_observation(policy, observation)

    def call():
        with torch.inference_mode():
            policy.encoder(normalized)
        synchronize(policy.device)
    return call


def latency(policy: Policy, observation: dict, steps: int | None, repeats: int = 15, warmup: int = 1) -> float:
    return median_ms(chunk_call(policy, observation, steps), repeats, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU figures")
    parser.add_argument("--compile", nargs="?", const="fp32", choices=["fp32", "bf16-vision"], default=None,
                        help="latency after Policy.compile_for_inference() (bf16-vision: with vision_bf16=True)")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch (LeRobot was measured at 32)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ds = LeRobotDataset(FIXTURE)
    ds.frame_cache.warm()
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {args.threads}, device {device}{gpu}")
    if not args.skip_train:
        for name, config, key in (("diffusion (ResNet-18 + U-Net 64/128/256)", "fixture_lift_diffusion.yaml", "train_diffusion_ms"),
                                  ("ACT (ResNet-18 + transformer dim 256)", "fixture_lift_act.yaml", "train_act_ms")):
            for precision in ("fp32", "bf16"):
                policy = build(config, [], ds, device)
                n = sum(p.numel() for p in policy.parameters()) / 1e6
                ms = train_speed(policy, ds, precision, args.steps, args.batch_size)
                print(f"train {name}, {n:.1f}M params, {precision}, batch {args.batch_size}: {ms:7.0f} ms/step"
                      f" = {args.batch_size * 1000 / ms:5.1f} samples/s"
                      f"   (LeRobot 0.4.4: {LEROBOT[key]} ms/step = {32000 / LEROBOT[key]:.1f} samples/s)")
    if not args.skip_latency:
        obs = fixture_observation(ds)
        warmup = 3 if args.compile else 1  # compiled: the first calls compile, record and replay the graphs
        diffusion = build("fixture_lift_diffusion.yaml", [], ds, device, args.compile)
        for label, scheduler, steps, ref in (("diffusion DDPM-100", "ddpm", 100, LEROBOT["ddpm100_ms"]),
                                             ("diffusion DDIM-10", "ddim", 10, LEROBOT["ddim10_ms"])):
            diffusion.head.cfg.scheduler = scheduler
            ms = latency(diffusion, obs, steps, warmup=warmup)
            print(f"latency {label:<20} {ms:7.1f} ms/chunk   (LeRobot 0.4.4: {ref} ms)")
        flow = build("fixture_lift_flow.yaml", [], ds, device, args.compile)
        for steps in (1, 2, 4, 10):
            print(f"latency flow-{steps:<15} {latency(flow, obs, steps, warmup=warmup):7.1f} ms/chunk")
        act = build("fixture_lift_act.yaml", [], ds, device, args.compile)
        act_obs = {k: v[-1:] for k, v in obs.items()}
        ms = latency(act, act_obs, None, warmup=warmup)
        print(f"latency {'ACT':<20} {ms:7.1f} ms/chunk   (LeRobot 0.4.4: {LEROBOT['act_ms']} ms)")
        enc_ms = latency_encoder(flow, obs)
        print(f"  of which the observation encoder (4 images through ResNet-18): {enc_ms:.1f} ms")


def latency_encoder(policy: Policy, observation: dict, repeats: int = 15) -> float:
    return median_ms(encoder_call(policy, observation), repeats)


if __name__ == "__main__":
    main()
