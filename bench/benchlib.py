"""What every benchmark script shares: the machine description recorded with each figure, and
the median-of-repeats timers (the first calls pay for allocation and kernel selection, so they
are run but not counted)."""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, {platform.system()}"


def command_line() -> str:
    """This script's invocation, shell-quoted so that a recorded command can be pasted back as it is."""
    return shlex.join(["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]])


def median_ms(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of `fn()` in milliseconds over `repeats` calls, after `warmup` uncounted ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def interleaved_median_ms(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each of `fns`, timed round-robin (a, b, c, a, b, c, ...).

    On a shared machine whose speed drifts over minutes, timing one variant after another
    measures the drift as much as the variants; interleaving gives each the same conditions.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1000) for name, t in times.items()}


def success_figure(summary: dict) -> dict:
    """The success part of an evaluation summary (eval.json), as the results files record it."""
    return {"successes": summary["successes"], "episodes": summary["episodes"],
            "success_rate": summary["success_rate"], "ci95": summary["ci95"]}


def write_result(filename: str, record: dict) -> Path:
    """Write a figure's raw record to bench/results/<filename> and say where."""
    results = Path(__file__).resolve().parent / "results"
    results.mkdir(exist_ok=True)
    path = results / filename
    path.write_text(json.dumps(record, indent=1))
    print(f"wrote {path}")
    return path
