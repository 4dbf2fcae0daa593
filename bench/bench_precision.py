"""fp32 or bf16 autocast for CPU training: the step time of each, per kind of policy.

  python bench/bench_precision.py [--reps 3] [--steps 6] [configs ...]

Why: `train.precision=auto` picks bf16 autocast on a CPU only for policies that read images; this
is the measurement behind that rule. For each config (default: a low-dim U-Net, the small-CNN image
policies, the ResNet-18 diffusion policy) on the LeRobot Lift fixture, it times the trainer's exact
step (`bench_policy.train_speed`) in fp32 and in bf16, alternating the two `--reps` times so the
machine's drift weighs on both alike, and prints the medians.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from bench_policy import FIXTURE, REPO, build, train_speed
from benchlib import machine
from robopolicy.config import load_config
from robopolicy.data.dataset import LeRobotDataset

DEFAULT_CONFIGS = ["lift_lowdim_flow.yaml", "lift_image_flow.yaml", "lift_image_act.yaml", "fixture_lift_diffusion.yaml"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("configs", nargs="*", default=DEFAULT_CONFIGS, help="file names under configs/")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    ds = LeRobotDataset(FIXTURE)
    ds.frame_cache.warm()
    cpu = torch.device("cpu")
    print(f"machine: {machine()}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    for config in args.configs:
        batch_size = load_config(REPO / "configs" / config, [f"data.path={FIXTURE}"]).train.batch_size
        times = {"fp32": [], "bf16": []}
        for _ in range(args.reps):
            for precision in times:
                times[precision].append(train_speed(build(config, [], ds, cpu), ds, precision, args.steps, batch_size))
        fp32, bf16 = (float(np.median(times[p])) for p in ("fp32", "bf16"))
        print(f"{config}: batch {batch_size}: fp32 {fp32:.0f} ms/step ({batch_size * 1000 / fp32:.0f} samples/s),"
              f" bf16 {bf16:.0f} ms/step ({batch_size * 1000 / bf16:.0f} samples/s), bf16/fp32 time {bf16 / fp32:.2f}")


if __name__ == "__main__":
    main()
