"""The training loop behind `robopolicy train`.

One function, `train(cfg)`, reads the dataset, builds the policy, and runs AdamW with warmup +
cosine LR, gradient clipping and an EMA of the weights (the EMA is what checkpoints export and
evaluation uses). It is seeded and deterministic on CPU: the batch at step s is a function of
(seed, s) and every RNG is checkpointed, so `resume=True` after a kill continues exactly where
the last checkpoint left off. Under torchrun it trains with DistributedDataParallel, and only
rank 0 writes. bf16 autocast is on by default where the hardware supports it (CUDA, or CPUs with
AVX512-BF16 / AMX), the main lever for speed on both.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import yaml
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel

from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.windows import BatchLoader, WindowedDataset, WindowSpec
from robopolicy.errors import ConfigError, RobopolicyError
from robopolicy.policy.policy import Policy
from robopolicy.structs import to_dict
from robopolicy.system import best_device, cpu_supports_bf16
from robopolicy.train import distributed
from robopolicy.train.checkpoint import latest_checkpoint, load_training_state, save_checkpoint
from robopolicy.train.logger import MetricsLogger, plot_loss, truncate_metrics

# Keys that may differ between a run and its resumption: they do not change the result, except
# train.steps, which a resumed run may raise to train on past its planned end (the cosine schedule
# then stretches to the new length from the resumed step on).
RESUMABLE_CHANGES = ("train.progress", "train.log_every", "train.keep_checkpoints", "train.steps", "eval.", "wandb.",
                     "output_dir")

EvalHook = Callable[[int, Path], dict]


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path
    steps: int
    final_loss: float
    samples_per_s: float
    train_seconds: float
    already_complete: bool = False  # a --resume of a run that had reached train.steps: nothing was done
    policy: Policy | None = None  # the trained policy in memory, with the weights the checkpoint exports


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device(best_device())
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available on this machine")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device, reads_images: bool = True) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32.

    `auto` is bf16 on CUDA devices that support it and, on CPUs with AVX512-BF16/AMX, for policies
    that read camera images: there oneDNN's bf16 convolutions pay (ResNet-18 diffusion 1.3-1.9x faster,
    the small CNN 1.1-1.2x), while a policy without images is small matrix products that run 12-23% slower
    with autocast's casts than in fp32 (bench/RESULTS.md). `bf16` asks for it regardless.
    """
    if name == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:  # on a CPU, auto autocasts only where it pays; bf16 runs anywhere there
        supported = device.type == "cpu" and (name == "bf16" or (cpu_supports_bf16() and reads_images))
    if name == "bf16" and not supported:
        raise ConfigError(f"train.precision=bf16 is not supported on {device}")
    return torch.bfloat16 if supported else None


def config_fingerprint(cfg_dict: dict) -> str:
    kept = {k: v for k, v in _flatten(cfg_dict).items() if not k.startswith(RESUMABLE_CHANGES)}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_resume_config(run_dir: Path, cfg_dict: dict) -> None:
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(f"cannot resume: {saved_path} not found")
    saved = _flatten(yaml.safe_load(saved_path.read_text()))
    now = _flatten(cfg_dict)
    for key in sorted(set(saved) | set(now)):
        if key.startswith(RESUMABLE_CHANGES):
            continue
        if saved.get(key) != now.get(key):
            raise ConfigError(f"cannot resume {run_dir}: config key {key!r} was {saved.get(key)!r}, now {now.get(key)!r}")


def start_from(policy: Policy, checkpoint: Path) -> None:
    """Load `checkpoint`'s weights and normalization into `policy`, built for the same config and
    features. The checkpoint's normalization is kept (its weights were learned with it), even when
    the new data's statistics differ."""
    source = Policy.load(checkpoint)
    if to_dict(source.config) != to_dict(policy.config):
        mine, theirs = _flatten(to_dict(policy.config)), _flatten(to_dict(source.config))
        key = next(k for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k))
        raise ConfigError(f"train.init_from {checkpoint}: its policy.{key} is {theirs.get(key)!r}, this config's"
                          f" is {mine.get(key)!r}")
    if [(f.key, f.shape) for f in source.spec.features] != [(f.key, f.shape) for f in policy.spec.features]:
        raise ConfigError(f"train.init_from {checkpoint}: trained on features "
                          f"{[(f.key, f.shape) for f in source.spec.features]}, this dataset has "
                          f"{[(f.key, f.shape) for f in policy.spec.features]}")
    policy.load_state_dict(source.state_dict())
    policy.stats = source.stats


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def build_loader(policy: Policy, dataset: LeRobotDataset, cfg, dist_info, prefetch: int = 0) -> BatchLoader:
    pc = policy.config
    spec = WindowSpec(n_obs_steps=pc.n_obs_steps, horizon=pc.horizon, action_offset=pc.first_action_offset)
    windows = WindowedDataset(dataset, spec.deltas(policy.training_keys), episodes=cfg.data.episodes)
    return BatchLoader(windows, batch_size=cfg.train.batch_size, seed=cfg.train.seed,
                       rank=dist_info.rank, world_size=dist_info.world_size, prefetch=prefetch)


def train(cfg, resume: bool = False, eval_hook: EvalHook | None = None) -> TrainResult:
    """Train the policy described by `cfg` (an ExperimentConfig); returns where the result is."""
    tc = cfg.train
    run_dir = cfg.run_dir
    device = resolve_device(tc.device)
    info = distributed.setup(device.type)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
    torch.set_num_threads(tc.num_threads or max(1, (os.cpu_count() or 1) // info.local_world_size))
    cfg_dict = to_dict(cfg)

    try:
        if not cfg.data.path:
            raise ConfigError("data.path is empty: set it in the config or with data.path=PATH")
        for parent in (run_dir, *run_dir.parents):
            if parent.exists() and not parent.is_dir():
                raise ConfigError(f"output_dir: {parent} is a file, not a folder (run folder {run_dir})")
        # a bad dataset, a policy that does not fit it or a bad init_from fail before anything is written
        dataset = LeRobotDataset(cfg.data.path, revision=cfg.data.revision)
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        policy = Policy.from_dataset(cfg.policy, dataset)
        if tc.init_from:
            start_from(policy, Path(tc.init_from))
        if info.is_main:
            if resume:
                _check_resume_config(run_dir, cfg_dict)
            elif latest_checkpoint(run_dir) is not None:
                raise ConfigError(f"run folder {run_dir} already has checkpoints: pass --resume to continue it,"
                                  f" or choose another name")
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
        distributed.barrier(info)

        if info.is_main:
            dataset.frame_cache.warm()  # decode videos once, before other ranks read the cache
        distributed.barrier(info)

        policy = policy.to(device)
        autocast_dtype = resolve_precision(tc.precision, device, reads_images=bool(policy.spec.keys("camera")))
        if policy.encoder.vision is not None and autocast_dtype is not None:
            policy.encoder.vision.to(memory_format=torch.channels_last)  # oneDNN / cuDNN bf16 convs prefer NHWC
        torch.manual_seed(tc.seed + info.rank)  # per-rank noise and augmentation
        loader = build_loader(policy, dataset, cfg, info, prefetch=2 if device.type == "cuda" else 0)
        params = [p for p in policy.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=tc.lr, betas=tuple(tc.betas), weight_decay=tc.weight_decay)
        scheduler = get_scheduler(tc.scheduler if tc.scheduler == "cosine" else "constant_with_warmup", optimizer,
                                  num_warmup_steps=tc.warmup_steps, num_training_steps=tc.steps)
        ema = (EMAModel(params, decay=tc.ema_max_decay, use_ema_warmup=True, power=tc.ema_power, foreach=True)
               if tc.ema else None)
        if ema is not None:
            ema.to(device)
        fingerprint = config_fingerprint(cfg_dict)

        start_step = 0
        if resume:
            ckpt = latest_checkpoint(run_dir)
            if ckpt is None:
                raise ConfigError(f"cannot resume: {run_dir} has no checkpoint yet (start it without --resume)")
            state = load_training_state(ckpt, policy, ema, optimizer, scheduler, rank=info.rank)
            if state.get("config_hash") != fingerprint:
                raise ConfigError(f"cannot resume from {ckpt}: it was trained with a different config")
            start_step = int(state["step"])
            if start_step >= tc.steps:
                return _finished_run(run_dir, ckpt, start_step, info)
            if info.is_main:
                truncate_metrics(run_dir, start_step)

        model = policy
        if info.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                policy, device_ids=[device.index] if device.type == "cuda" else None)

        logger = MetricsLogger(run_dir, cfg.wandb, cfg_dict, enabled=info.is_main)
        result = _loop(cfg, policy, model, loader, optimizer, scheduler, ema, autocast_dtype, device, info,
                       run_dir, start_step, fingerprint, logger, eval_hook)
        logger.close()
        if ema is not None:  # what checkpoints export (and evaluation uses): the EMA weights
            ema.copy_to(params)
        result.policy = policy.eval()
        if info.is_main:
            summary = {"steps": result.steps, "final_loss": result.final_loss,
                       "samples_per_s": result.samples_per_s, "train_seconds": result.train_seconds,
                       "parameters": sum(p.numel() for p in policy.parameters()),
                       "device": str(device), "precision": str(autocast_dtype or "fp32"),
                       "world_size": info.world_size}
        checksums = distributed.gather_strings(info, distributed.parameter_checksum(policy))
        if info.is_main:
            summary["rank_parameter_checksums"] = checksums
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
            plot_loss(run_dir)
        return result
    finally:
        distributed.cleanup(info)


def _finished_run(run_dir: Path, checkpoint: Path, step: int, info) -> TrainResult:
    """`--resume` of a run whose last checkpoint is already at train.steps: nothing to do, and
    nothing rewritten (its summary.json keeps the figures of the run that did the training; a run
    killed between its last checkpoint and its summary gets a summary holding only its steps)."""
    summary_path = run_dir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if info.is_main:
        print(f"{run_dir} is complete: its last checkpoint is at step {step}. Raise train.steps to train it further.")
        if not summary:  # killed after its last checkpoint, before the summary: say the run is done
            summary_path.write_text(json.dumps({"steps": step, "written_on_resume": True}, indent=1))
    return TrainResult(run_dir=run_dir, checkpoint=run_dir / "checkpoints" / "last", steps=step,
                       final_loss=summary.get("final_loss", float("nan")),
                       samples_per_s=summary.get("samples_per_s", float("nan")),
                       train_seconds=summary.get("train_seconds", 0.0), already_complete=True)


def _loop(cfg, policy, model, loader, optimizer, scheduler, ema, autocast_dtype, device, info, run_dir,
          start_step, fingerprint, logger, eval_hook) -> TrainResult:
    tc = cfg.train
    params = [p for p in policy.parameters() if p.requires_grad]
    autocast = (torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None
                else contextlib.nullcontext())
    progress = None
    if info.is_main and tc.progress:
        from tqdm import tqdm

        progress = tqdm(total=tc.steps, initial=start_step, desc=f"train {cfg.name}", unit="step", dynamic_ncols=True)

    def checkpoint(step: int) -> Path | None:
        path = None
        rng = distributed.gather_rng_states(info)  # every rank's generator, so resume is exact under DDP too
        if info.is_main:
            path = save_checkpoint(run_dir, step, policy, ema, optimizer, scheduler, fingerprint,
                                   rng_states=rng, keep=tc.keep_checkpoints)
        distributed.barrier(info)
        return path

    window_losses: list[float] = []
    window_start = time.perf_counter()
    train_start = time.perf_counter()
    step = start_step
    last_ckpt = None
    final_loss = float("nan")
    policy.train()
    batches = loader.iterate(start_step)
    try:
        for step in range(start_step, tc.steps):
            batch = to_device(next(batches), device)
            with autocast:
                out = model(batch)
            loss = out["loss"]
            if not torch.isfinite(loss):
                raise RobopolicyError(f"training diverged: loss is {loss.item()} at step {step}; last checkpoint:"
                                      f" {run_dir / 'checkpoints' / 'last'} (lower train.lr or check the data)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.step(params)
            done = step + 1
            window_losses.append(loss.item())
            final_loss = window_losses[-1]
            if done % tc.log_every == 0 or done == tc.steps:
                elapsed = time.perf_counter() - window_start
                sps = len(window_losses) * tc.batch_size * info.world_size / max(elapsed, 1e-9)
                metrics = {"loss": float(np.mean(window_losses)), "lr": scheduler.get_last_lr()[0],
                           "grad_norm": float(grad_norm), "samples_per_s": sps}
                metrics.update({k: float(v) for k, v in out.items() if k != "loss"})
                logger.log(done, metrics)
                if progress is not None:
                    progress.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.1e}", sps=f"{sps:.1f}")
                window_losses.clear()
                window_start = time.perf_counter()
            if progress is not None:
                progress.update(1)
            if done % tc.save_every == 0 or done == tc.steps:
                last_ckpt = checkpoint(done)
            if eval_hook is not None and cfg.eval.every and done % cfg.eval.every == 0 and done != tc.steps:
                if info.is_main:
                    ckpt = last_ckpt if last_ckpt is not None and last_ckpt.name.endswith(f"{done:06d}") else checkpoint(done)
                    logger.log(done, {f"eval/{k}": v for k, v in eval_hook(done, ckpt).items()})
                distributed.barrier(info)
    except KeyboardInterrupt:
        if step > start_step and info.is_main:
            path = save_checkpoint(run_dir, step, policy, ema, optimizer, scheduler, fingerprint,
                                   rng_states=[torch.get_rng_state()], keep=tc.keep_checkpoints)
            print(f"\ninterrupted: saved {path}; continue with --resume")
        raise
    finally:
        if progress is not None:
            progress.close()
    seconds = time.perf_counter() - train_start
    steps_run = tc.steps - start_step
    return TrainResult(run_dir=run_dir, checkpoint=run_dir / "checkpoints" / "last", steps=tc.steps,
                       final_loss=final_loss,
                       samples_per_s=steps_run * tc.batch_size * info.world_size / max(seconds, 1e-9),
                       train_seconds=seconds)
