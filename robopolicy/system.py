"""What this installation can do: versions, compute devices, optional components, rendering."""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import platform
from pathlib import Path


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def user_cache_dir() -> Path:
    """Where robopolicy keeps per-user caches (VLM features, instruction vectors): $ROBOPOLICY_CACHE_DIR,
    else ~/.cache/robopolicy."""
    base = os.environ.get("ROBOPOLICY_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "robopolicy"


def best_device() -> str:
    """cuda when available, else mps, else cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matmul (AVX512-BF16 / AMX), where autocast pays off."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:
        return False


def versions() -> dict[str, str | None]:
    names = ["robopolicy", "torch", "torchvision", "diffusers", "transformers", "numpy", "pyarrow", "av",
             "mujoco", "robosuite", "gymnasium", "wandb", "peft", "lerobot"]
    return {n: package_version(n) for n in names}


def system_report() -> str:
    import torch

    lines = [f"python      {platform.python_version()} ({platform.machine()}, {os.cpu_count()} CPUs)"]
    for name, version in versions().items():
        lines.append(f"{name:<12}{version or 'not installed'}")
    lines.append(f"device      {best_device()} (cuda available: {torch.cuda.is_available()},"
                 f" CPU bf16: {cpu_supports_bf16()})")
    lines.append(f"MUJOCO_GL   {os.environ.get('MUJOCO_GL', '(unset: robopolicy uses egl for headless rendering)')}")
    return "\n".join(lines)
