"""Training checkpoints: a loadable policy plus everything needed to resume bit-for-bit.

    RUN/checkpoints/step_000500/
        config.json  model.safetensors  stats.json     <- Policy.load() reads these (EMA weights)
        training_state/
            raw_model.safetensors                      the weights the optimizer is updating
            optimizer.safetensors  optimizer.json      AdamW moments and hyper-parameters
            ema.safetensors                            EMA shadow weights
            rng.safetensors                            torch CPU generator of every rank (and CUDA)
            state.json                                 step, scheduler, EMA counters, config hash
    RUN/checkpoints/last -> step_000500                updated by an atomic symlink rename

Each step folder is written to a temporary name and renamed into place, so a run killed at any
moment leaves its previous checkpoint intact. Everything is safetensors or JSON: no pickles.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robopolicy.errors import CheckpointError
from robopolicy.fileio import atomic_directory, atomic_symlink
from robopolicy.policy.policy import write_policy_files

STATE_DIR = "training_state"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(run_dir: Path, step: int, policy, ema, optimizer, scheduler, config_hash: str,
                    rng_states: list[torch.Tensor], extra: dict | None = None, keep: int = 2) -> Path:
    """Write RUN/checkpoints/step_N atomically and point `last` at it."""
    ckpt_root = run_dir / "checkpoints"
    target = ckpt_root / step_dir_name(step)
    raw = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    export = dict(raw)
    if ema is not None:
        params = [n for n, p in policy.named_parameters() if p.requires_grad]  # the EMA tracks trainable ones
        for name, shadow in zip(params, ema.shadow_params):
            export[name] = shadow.detach().cpu().contiguous()
    with atomic_directory(target) as tmp:
        write_policy_files(tmp, policy.spec, export, policy.stats)
        state_dir = tmp / STATE_DIR
        state_dir.mkdir()
        save_file(raw, str(state_dir / "raw_model.safetensors"))
        tensors, meta = flatten_optimizer(optimizer)
        save_file(tensors, str(state_dir / "optimizer.safetensors"))
        (state_dir / "optimizer.json").write_text(json.dumps(meta))
        ema_meta = None
        if ema is not None:
            save_file({str(i): p.detach().cpu().contiguous() for i, p in enumerate(ema.shadow_params)},
                      str(state_dir / "ema.safetensors"))
            ema_meta = {"optimization_step": int(ema.optimization_step), "cur_decay_value": ema.cur_decay_value}
        rng = {f"torch_rank{r}": state for r, state in enumerate(rng_states)}
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                rng[f"cuda{i}"] = s
        save_file(rng, str(state_dir / "rng.safetensors"))
        state = {"step": step, "scheduler": scheduler.state_dict(), "ema": ema_meta, "config_hash": config_hash,
                 **(extra or {})}
        (state_dir / "state.json").write_text(json.dumps(state, indent=1, default=_json_default))
    atomic_symlink(ckpt_root / "last", target.name)
    _prune(ckpt_root, keep)
    return target


def load_training_state(checkpoint: Path, policy, ema, optimizer, scheduler, rank: int = 0) -> dict:
    """Restore weights, optimizer, scheduler, EMA and RNG from a checkpoint; returns state.json."""
    state_dir = checkpoint / STATE_DIR
    if not (state_dir / "state.json").is_file():
        raise CheckpointError(f"{checkpoint} has no {STATE_DIR}/state.json: it cannot be resumed from")
    try:
        state = json.loads((state_dir / "state.json").read_text())
        raw = load_file(str(state_dir / "raw_model.safetensors"))
        policy.load_state_dict(raw, strict=True)
        optimizer.load_state_dict(unflatten_optimizer(load_file(str(state_dir / "optimizer.safetensors")),
                                                       json.loads((state_dir / "optimizer.json").read_text())))
        scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state.get("ema") is not None:
            shadows = load_file(str(state_dir / "ema.safetensors"))
            for i, p in enumerate(ema.shadow_params):
                p.data.copy_(shadows[str(i)].to(p.device))
            ema.optimization_step = state["ema"]["optimization_step"]
            ema.cur_decay_value = state["ema"]["cur_decay_value"]
        rng = load_file(str(state_dir / "rng.safetensors"))
        key = f"torch_rank{rank}"
        if key not in rng:
            raise CheckpointError(f"{checkpoint} holds RNG states for {len([k for k in rng if k.startswith('torch_')])}"
                                  f" ranks; resume with the same number of processes")
        torch.set_rng_state(rng[key])
        if torch.cuda.is_available():
            cuda = [rng[k] for k in sorted(rng) if k.startswith("cuda")]
            if cuda:
                torch.cuda.set_rng_state_all(cuda)
    except (OSError, KeyError, RuntimeError, ValueError, TypeError, SafetensorError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"cannot resume from {checkpoint}: {first}") from None
    return state


def latest_checkpoint(run_dir: Path) -> Path | None:
    last = run_dir / "checkpoints" / "last"
    if last.exists():
        return last.resolve()
    steps = sorted((run_dir / "checkpoints").glob("step_*")) if (run_dir / "checkpoints").is_dir() else []
    return steps[-1] if steps else None


def _prune(ckpt_root: Path, keep: int) -> None:
    steps = sorted(p for p in ckpt_root.glob("step_*") if p.is_dir())
    for old in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in ckpt_root.glob(".step_*"):  # temp folders of a killed writer
        shutil.rmtree(leftover, ignore_errors=True)


def _json_default(obj):
    if torch.is_tensor(obj):
        return obj.tolist()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
