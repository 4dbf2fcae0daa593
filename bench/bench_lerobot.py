"""LeRobot's own diffusion and ACT policies timed on this machine, for side-by-side figures.

  python -m venv --system-site-packages /tmp/lerobot && /tmp/lerobot/bin/pip install "lerobot==0.4.4"
  /tmp/lerobot/bin/python bench/bench_lerobot.py [--steps 8] [--repeats 15]

Runs in an environment with LeRobot installed (it pins its own torch); robopolicy is not imported,
only this folder's benchlib.
The workloads of `bench_policy.py`, built the way the reference LeRobot figures were measured: the Lift fixture's
features (2 cameras at 84x84 cropped to 76x76, state, 2 observation frames, horizon 16, batch 32),
"small" diffusion = one ResNet-18 with GroupNorm shared by the cameras + spatial softmax (32
keypoints) + U-Net 64/128/256, ACT with dim 256 and feed-forward 1024 (the shape of our
`configs/fixture_lift_act.yaml`); backbones from scratch (no hub here). Training step
= forward + backward + AdamW on a random batch of the right shapes (step time does not depend on the
values); chunk = `generate_actions` (diffusion: DDPM-100 and DDIM-10) / ACT's `predict_action_chunk`
from one already-normalized observation, batch 1. Medians; 2 threads.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchlib import machine, median_ms

CAMERAS = ["observation.images.agentview", "observation.images.wrist"]


def features():
    from lerobot.configs.types import FeatureType, PolicyFeature

    inputs = {"observation.state": PolicyFeature(type=FeatureType.STATE, shape=(9,))}
    inputs.update({k: PolicyFeature(type=FeatureType.VISUAL, shape=(3, 84, 84)) for k in CAMERAS})
    return inputs, {"action": PolicyFeature(type=FeatureType.ACTION, shape=(7,))}


def diffusion_policy(scheduler: str = "DDPM", inference_steps: int = 100):
    from lerobot.policies.diffusion.configuration_diffusion import DiffusionConfig
    from lerobot.policies.diffusion.modeling_diffusion import DiffusionPolicy

    inputs, outputs = features()
    cfg = DiffusionConfig(input_features=inputs, output_features=outputs, n_obs_steps=2, horizon=16,
                          n_action_steps=8, vision_backbone="resnet18", pretrained_backbone_weights=None,
                          use_group_norm=True, spatial_softmax_num_keypoints=32, crop_shape=(76, 76),
                          down_dims=(64, 128, 256), noise_scheduler_type=scheduler,
                          num_inference_steps=inference_steps, device="cpu")
    return DiffusionPolicy(cfg)


def act_policy():
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    inputs, outputs = features()
    cfg = ACTConfig(input_features=inputs, output_features=outputs, chunk_size=16, n_action_steps=8,
                    dim_model=256, dim_feedforward=1024, pretrained_backbone_weights=None, device="cpu")
    return ACTPolicy(cfg)


def batch(size: int, n_obs: int, horizon: int) -> dict:
    b = {"observation.state": torch.randn(size, n_obs, 9), "action": torch.randn(size, horizon, 7),
         "action_is_pad": torch.zeros(size, horizon, dtype=torch.bool)}
    b.update({k: torch.rand(size, n_obs, 3, 84, 84) for k in CAMERAS})
    if n_obs == 1:  # ACT reads single frames
        b = {k: (v[:, 0] if k.startswith("observation") else v) for k, v in b.items()}
    return b


def train_ms(policy, n_obs: int, steps: int, batch_size: int) -> float:
    opt = torch.optim.AdamW(policy.parameters(), lr=1e-4)
    policy.train()
    times = []
    for i in range(steps + 2):
        data = batch(batch_size, n_obs, 16)
        start = time.perf_counter()
        loss, _ = policy.forward(data)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def diffusion_chunk_call(policy):
    policy.eval()
    data = batch(1, 2, 16)
    obs = {"observation.state": data["observation.state"],
           "observation.images": torch.stack([data[k] for k in CAMERAS], dim=-4)}

    def call():
        with torch.no_grad():
            policy.diffusion.generate_actions(obs)
    return call


def act_chunk_call(policy):
    policy.eval()
    obs = {k: v for k, v in batch(1, 1, 16).items() if k.startswith("observation")}

    def call():
        with torch.no_grad():
            policy.predict_action_chunk(obs)
    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    import lerobot

    print(f"machine: {machine()}; lerobot {lerobot.__version__}, torch {torch.__version__},"
          f" threads {torch.get_num_threads()}")
    ddpm = diffusion_policy("DDPM", 100)
    act = act_policy()
    for name, policy in (("diffusion", ddpm), ("ACT", act)):
        print(f"{name}: {sum(p.numel() for p in policy.parameters()) / 1e6:.1f}M parameters")
    if not args.skip_train:
        ms = train_ms(ddpm, 2, args.steps, 32)
        print(f"diffusion training step, fp32, batch 32: {ms:.0f} ms = {32000 / ms:.1f} samples/s")
        ms = train_ms(act, 1, args.steps, 32)
        print(f"ACT training step, fp32, batch 32: {ms:.0f} ms = {32000 / ms:.1f} samples/s")
    ddim = diffusion_policy("DDIM", 10)
    ddim.load_state_dict(ddpm.state_dict())
    print(f"diffusion DDPM-100 chunk: {median_ms(diffusion_chunk_call(ddpm), max(3, args.repeats // 5)):.1f} ms")
    print(f"diffusion DDIM-10 chunk: {median_ms(diffusion_chunk_call(ddim), args.repeats):.1f} ms")
    print(f"ACT chunk: {median_ms(act_chunk_call(act), args.repeats):.1f} ms")


if __name__ == "__main__":
    main()
