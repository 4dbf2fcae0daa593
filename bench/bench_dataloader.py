"""Training-window sampling throughput on a LeRobot video dataset.

Workload (the one LeRobot 0.4.4 was measured on, 301 samples/s with 2 DataLoader workers):
2 cameras at 84x84, 2 observation frames, 16-step action chunks, batch 32, shuffled.

  python bench/bench_dataloader.py [--dataset tests/fixtures/lerobot_lift_v3] [--batches 400]

Cold = a fresh frame cache, so the first epoch includes decoding every video once.
Warm = the cache is on disk (every later epoch and every later run).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.windows import BatchLoader, WindowedDataset, WindowSpec

DEFAULT = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "lerobot_lift_v3"


def run(dataset: Path, batches: int, batch_size: int) -> dict:
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        ds = LeRobotDataset(dataset, cache_dir=cache)
        keys = ["observation.state", *ds.camera_keys]
        windows = WindowedDataset(ds, WindowSpec(n_obs_steps=2, horizon=16).deltas(keys))
        loader = BatchLoader(windows, batch_size=batch_size, seed=0, prefetch=0)
        epoch = loader.batches_per_epoch
        for _ in loader.iterate(0, epoch):
            pass
        cold = epoch * batch_size / (time.perf_counter() - t0)

        t0 = time.perf_counter()
        for _ in loader.iterate(epoch, batches):
            pass
        warm = batches * batch_size / (time.perf_counter() - t0)
    return {"cold_samples_per_s": cold, "warm_samples_per_s": warm, "batches_per_epoch": epoch}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", type=Path, default=DEFAULT)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    r = run(args.dataset, args.batches, args.batch_size)
    print(f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}")
    print(f"cold (first epoch, decoding into the frame cache): {r['cold_samples_per_s']:8.0f} samples/s")
    print(f"warm (frame cache on disk):                        {r['warm_samples_per_s']:8.0f} samples/s")
    print("LeRobot 0.4.4, same data and windows, 2 workers:        301 samples/s")
    print(f"speed-up (warm): {r['warm_samples_per_s'] / 301:.1f}x")


if __name__ == "__main__":
    main()
