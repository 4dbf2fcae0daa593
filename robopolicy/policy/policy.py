"""Policy = normalizer + observation encoder + action head.

    policy = Policy.from_dataset(config, dataset)     # shapes and stats from the training data
    losses = policy(batch)                             # training: normalized inside
    chunk = policy.predict_chunk(observation)          # (H', A) numpy, robot units, actions for t, t+1, ...
    policy.save("ckpt"); Policy.load("ckpt")           # config.json + model.safetensors + stats.json

A checkpoint folder is self-sufficient: config.json holds the `PolicySpec` (config plus the
feature shapes it was trained on) and model.safetensors every weight, the normalization buffers
included. Nothing is pickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from robopolicy.data.normalizer import Normalizer
from robopolicy.errors import CheckpointError, ConfigError, ObservationError
from robopolicy.fileio import atomic_directory, sha256_files
from robopolicy.policy.config import FeatureSpec, PolicyConfig, PolicySpec
from robopolicy.policy.encoders import encoder_class
from robopolicy.policy.encoders.base import Conditioning, Encoder
from robopolicy.policy.heads import HEADS
from robopolicy.policy.rotations import check_starts, rewrite_batch, rotation_feature_stats
from robopolicy.structs import from_dict, to_dict

CHECKPOINT_FORMAT = "robopolicy.policy"
CHECKPOINT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
STATS_FILE = "stats.json"


def build_encoder(spec: PolicySpec) -> Encoder:
    return encoder_class(spec.config.encoder.type)(spec)


class Policy(nn.Module):
    def __init__(self, spec: PolicySpec, stats: Mapping[str, Mapping[str, np.ndarray]] | None = None):
        super().__init__()
        self.spec = spec
        cfg = spec.config
        modes = {k: cfg.state_norm for k in spec.keys("state") + spec.keys("auxiliary")}
        modes["action"] = cfg.action_normalization
        check_quaternions(spec)
        dims = {k: spec.input_dim(k) if k != "action" else spec.action_dim for k in modes}
        try:
            self.normalizer = Normalizer(modes, dims, stats)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        self.encoder = build_encoder(spec)
        self.head = HEADS[cfg.head](cfg, spec.action_dim, pooled_dim=self.encoder.pooled_dim,
                                    token_dim=self.encoder.dim)
        self.stats = {k: {s: np.asarray(v).tolist() for s, v in stats[k].items()} for k in modes} if stats else None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dataset(cls, config: PolicyConfig, dataset) -> "Policy":
        """Feature shapes, fps, tasks and normalization statistics come from a LeRobotDataset."""
        enc = config.encoder
        cameras = dataset.camera_keys if enc.cameras is None else list(enc.cameras)
        for key in [*cameras, *enc.state_keys, *enc.auxiliary_state_keys, "action"]:
            if key not in dataset.features:
                raise ConfigError(f"feature {key!r} is not in dataset {dataset.root};"
                                  f" it has {sorted(k for k in dataset.features)}")
        if enc.auxiliary_state_keys and not cameras:
            raise ConfigError("policy.encoder.auxiliary_state_keys are predicted from the camera tokens, and the"
                              " policy reads no cameras")
        features = [FeatureSpec(k, list(dataset.features[k]["shape"]), "state") for k in enc.state_keys]
        features += [FeatureSpec(k, list(dataset.features[k]["shape"]), "camera") for k in cameras]
        features += [FeatureSpec(k, list(dataset.features[k]["shape"]), "auxiliary") for k in enc.auxiliary_state_keys]
        features.append(FeatureSpec("action", list(dataset.features["action"]["shape"]), "action"))
        spec = PolicySpec(config=config, features=features, fps=dataset.fps, tasks=list(dataset.tasks),
                          robot_type=dataset.info.get("robot_type"))
        check_quaternions(spec)
        stats = dict(dataset.stats)
        for key, starts in config.quaternions.items():  # statistics of the feature the network reads
            if key in dataset.features:
                stats[key] = rotation_feature_stats(dataset.columns[key], starts)
        policy = cls(spec, stats=stats)
        policy.encoder.bind_dataset(dataset)
        return policy

    @property
    def config(self) -> PolicyConfig:
        return self.spec.config

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def observation_keys(self) -> list[str]:
        return self.spec.keys("state") + self.spec.keys("camera")

    @property
    def training_keys(self) -> list[str]:
        """What a training batch holds per observation step: the observations and any auxiliary targets."""
        return self.observation_keys + self.spec.keys("auxiliary")

    @property
    def supports_prefix(self) -> bool:
        """Whether chunks can be made to continue committed actions (real-time chunking)."""
        return self.head.supports_prefix

    @property
    def chunk_start(self) -> int:
        """Index of the current step t inside a predicted chunk (1 when chunks start at t-1)."""
        return -self.config.first_action_offset

    # ------------------------------------------------------------------ training
    def forward(self, batch: Mapping[str, Any]) -> dict:
        normalized = self.normalizer.normalize_batch(rewrite_batch(batch, self.config.quaternions))
        cond = self.encoder(normalized)
        losses = self.head.loss(cond, normalized["action"], batch.get("action_is_pad"))
        auxiliary = self.encoder.auxiliary_loss(cond, normalized)
        if auxiliary is not None:
            losses["auxiliary"] = auxiliary.detach()
            losses["loss"] = losses["loss"] + self.config.encoder.auxiliary_weight * auxiliary
        return losses

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def sample_actions(self, batch: Mapping[str, Any], steps: int | None = None, prefix: torch.Tensor | None = None,
                       generator: torch.Generator | list[torch.Generator] | None = None) -> torch.Tensor:
        """Batched inference: training-format observations -> (B, H', A) actions for t, t+1, ...

        `prefix` (B, K, A), robot units, holds actions already committed for t .. t+K-1.
        `generator` is one for the whole batch, or a list of B, one per row: row i's noise is then
        what a batch of one would draw from generator i, so a row samples the same chunk whatever
        it is batched with (batched evaluation gives each episode its own).
        """
        cond = self.encode(batch)
        head_prefix = head_mask = None
        if prefix is not None:
            prefix = torch.as_tensor(prefix, dtype=torch.float32, device=cond.tokens.device)
            if prefix.dim() == 2:
                prefix = prefix.unsqueeze(0).expand(cond.batch_size, -1, -1)
            k = prefix.shape[1]
            s = self.chunk_start
            if s + k > self.config.horizon:
                raise ValueError(f"prefix of {k} steps does not fit in the {self.config.horizon - s} predicted steps")
            head_prefix = torch.zeros(cond.batch_size, self.config.horizon, self.spec.action_dim, device=prefix.device)
            head_prefix[:, s:s + k] = self.normalizer.normalize("action", prefix)
            head_mask = torch.zeros(cond.batch_size, self.config.horizon, dtype=torch.bool, device=prefix.device)
            head_mask[:, s:s + k] = True
        actions = self.head.sample(cond, steps=steps, prefix=head_prefix, prefix_mask=head_mask, generator=generator)
        return self.normalizer.unnormalize("action", actions)[:, self.chunk_start:]

    def encode(self, batch: Mapping[str, Any]) -> Conditioning:
        """Training-format observations -> the encoder's conditioning, normalized as the heads expect."""
        return self.encoder(self.normalizer.normalize_batch(rewrite_batch(batch, self.config.quaternions)))

    def observation_batches(self, observations: Sequence[Mapping[str, Any]]) -> dict:
        """Several env/robot observations (each as `observation_batch` takes it) -> one batch, in order."""
        batches = [self.observation_batch(o) for o in observations]
        out: dict[str, Any] = {k: torch.cat([b[k] for b in batches]) for k in batches[0] if k != "task"}
        out["task"] = [b["task"][0] for b in batches]
        return out

    def observation_batch(self, observation: Mapping[str, Any]) -> dict:
        """One robot/env observation -> a batch of 1 in training format.

        Values may carry the history axis first — state (T, D), camera (T, H, W, 3) — or be a single
        step — state (D,), camera (H, W, 3) — which is then repeated T times. Cameras are uint8 RGB
        (H, W, 3) as envs and robots produce them; floats in [0, 1] are accepted too.
        """
        t = self.config.n_obs_steps
        device = self.device
        batch: dict[str, Any] = {}
        for key in self.spec.keys("state"):
            value = _require(observation, key)
            array = np.asarray(value, dtype=np.float32)
            dim = self.spec.shape(key)[0]
            if array.ndim == 1:
                array = np.repeat(array[None], t, axis=0)
            if array.shape != (t, dim):
                raise ObservationError(f"observation {key!r} has shape {np.shape(value)}; the policy expects ({dim},)"
                                       f" or ({t}, {dim})")
            if not np.isfinite(array).all():
                raise ObservationError(f"observation {key!r} contains NaN or inf")
            batch[key] = torch.from_numpy(array).to(device)[None]
        for key in self.spec.keys("camera"):
            value = _require(observation, key)
            array = np.asarray(value)
            h, w, c = self.spec.shape(key)
            if array.shape == (h, w, c):
                array = np.repeat(array[None], t, axis=0)
            if array.shape != (t, h, w, c):
                raise ObservationError(f"camera {key!r} has shape {array.shape}; the policy expects ({h}, {w}, {c})"
                                       f" or ({t}, {h}, {w}, {c}) RGB")
            tensor = torch.from_numpy(np.ascontiguousarray(array)).to(device)
            tensor = tensor.float() / 255.0 if tensor.dtype == torch.uint8 else tensor.float()
            batch[key] = tensor.permute(0, 3, 1, 2)[None]
        task = observation.get("task") or (self.spec.tasks[0] if self.spec.tasks else "")
        batch["task"] = [task]
        return batch

    @torch.no_grad()
    def predict_chunk(self, observation: Mapping[str, Any], steps: int | None = None, prefix: np.ndarray | None = None,
                      generator: torch.Generator | None = None) -> np.ndarray:
        """(H', A) float32 actions in robot units for steps t, t+1, ... (H' = horizon + action_offset)."""
        # Switching modes walks every submodule (~5 ms a call for a ResNet policy on a CPU), so it
        # happens only when the policy is in training mode; a deployed policy stays in eval mode.
        was_training = self.training
        if was_training:
            self.eval()
        try:
            actions = self.sample_actions(self.observation_batch(observation), steps=steps,
                                          prefix=None if prefix is None else torch.as_tensor(prefix)[None],
                                          generator=generator)
        finally:
            if was_training:
                self.train()
        return actions[0].float().cpu().numpy()

    def compile_for_inference(self, vision_bf16: bool = False) -> "Policy":
        """Make batch-1 chunks fast on this device: CUDA graphs on a GPU, ONNX Runtime on a CPU
        (robopolicy.policy.accel; the `onnx` extra on a CPU). Same weights and checkpoint, same chunks
        to float rounding. The first chunks (GPU) or this call (CPU, tens of seconds) pay for
        compilation; call it once after loading, then use `predict_chunk` as usual. For inference
        only: do not train afterwards. `vision_bf16` (CPUs with AMX / AVX512-BF16): the camera
        encoders run in bf16 instead, chunks within ~2e-3 of fp32.
        """
        from robopolicy.policy.accel import compile_for_inference

        compile_for_inference(self, vision_bf16=vision_bf16)
        return self

    # ------------------------------------------------------------------ checkpoints
    def save(self, directory: str | Path, state_dict: Mapping[str, torch.Tensor] | None = None) -> Path:
        """Write config.json + model.safetensors + stats.json atomically into `directory`.

        `state_dict` overrides the weights written (the trainer passes its EMA weights).
        """
        directory = Path(directory)
        weights = {k: v.detach().to("cpu").contiguous() for k, v in (state_dict or self.state_dict()).items()}
        with atomic_directory(directory) as tmp:
            write_policy_files(tmp, self.spec, weights, self.stats)
        return directory

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu", weights: str = "ema",
             timestep_spacing: str | None = None) -> "Policy":
        """Rebuild a policy from a checkpoint folder.

        weights="ema" reads model.safetensors (the exported weights: the EMA when training used one);
        weights="raw" reads the optimizer's own weights from a training checkpoint's training_state/.
        device="auto" picks cuda, else mps, else cpu.
        timestep_spacing ("leading" / "trailing", eval's and finetune's option) samples a diffusion policy's
        chain that way instead of its config's: training draws timesteps uniformly, so the weights serve
        either; a saved copy records it.
        """
        if device == "auto":
            from robopolicy.system import best_device

            device = best_device()
        directory = Path(directory)
        spec = read_spec(directory)
        if timestep_spacing:
            if spec.config.head != "diffusion":
                raise ConfigError(f"{directory}: timestep_spacing={timestep_spacing}: it spaces a diffusion sampler's "
                                  f"steps, and this policy's head is {spec.config.head}")
            spec.config.diffusion.timestep_spacing = timestep_spacing
        policy = cls(spec)
        files = {"ema": directory / WEIGHTS_FILE, "raw": directory / "training_state" / "raw_model.safetensors"}
        if weights not in files:
            raise CheckpointError(f"weights must be 'ema' or 'raw', got {weights!r}")
        path = files[weights]
        try:
            state = load_file(str(path))
        except FileNotFoundError:
            raise CheckpointError(f"missing file: {path}") from None
        except (SafetensorError, OSError) as err:
            raise CheckpointError(f"{path}: unreadable ({err})") from None
        load_weights(policy, state, path)
        stats_path = directory / STATS_FILE
        if stats_path.is_file():
            policy.stats = read_checkpoint_stats(stats_path)
        return policy.to(device).eval()


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({getattr(err, 'msg', type(err).__name__)})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: must be a JSON object, got {type(data).__name__}")
    return data


def read_checkpoint_stats(path: Path) -> dict:
    """A checkpoint's stats.json: per-feature objects of numbers (what safety bounds are made from)."""
    data = _read_json_object(path)
    for key, entry in data.items():
        if not isinstance(entry, dict):
            raise CheckpointError(f"{path}: statistics of {key!r} must be an object")
        for name, value in entry.items():
            try:
                array = np.asarray(value, dtype=np.float64)
            except (TypeError, ValueError):
                raise CheckpointError(f"{path}: {key}.{name} is not numbers") from None
            if name in ("min", "max", "mean", "std") and not np.isfinite(array).all():
                raise CheckpointError(f"{path}: {key}.{name} contains NaN or inf")
    return data


def check_quaternions(spec: PolicySpec) -> None:
    """`policy.quaternions` must name state features and whole quaternions inside them."""
    for key, starts in spec.config.quaternions.items():
        if key not in spec.keys("state"):
            raise ConfigError(f"policy.quaternions names {key!r}, which is not one of the state keys"
                              f" {spec.keys('state')}")
        try:
            check_starts(key, spec.shape(key)[0], starts)
        except ValueError as err:
            raise ConfigError(f"policy.{err}") from None


def write_policy_files(directory: Path, spec: PolicySpec, weights: Mapping[str, torch.Tensor],
                       stats: Mapping | None) -> None:
    config = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "spec": to_dict(spec)}
    (directory / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file(dict(weights), str(directory / WEIGHTS_FILE), metadata={"format": CHECKPOINT_FORMAT})
    if stats is not None:
        (directory / STATS_FILE).write_text(json.dumps(stats, indent=1))


def read_spec(directory: Path) -> PolicySpec:
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {directory}")
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"missing file: {path} (is {directory} a robopolicy checkpoint?)")
    data = _read_json_object(path)
    if data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a robopolicy policy checkpoint (format {data.get('format')!r})")
    version = data.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: version must be an integer, got {version!r}")
    if version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {version} is newer than this robopolicy reads")
    if not isinstance(data.get("spec"), dict):
        raise CheckpointError(f"{path}: 'spec' is missing or not an object")
    try:
        return from_dict(PolicySpec, data["spec"])
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None


def load_weights(policy: nn.Module, weights: Mapping[str, torch.Tensor], where: Path) -> None:
    """Strict load with a one-line explanation of the first mismatch."""
    expected = policy.state_dict()
    missing = [k for k in expected if k not in weights]
    unexpected = [k for k in weights if k not in expected]
    if missing:
        raise CheckpointError(f"{where}: weights do not match config.json: parameter {missing[0]!r} is missing"
                              f" ({len(missing)} missing)")
    if unexpected:
        raise CheckpointError(f"{where}: weights do not match config.json: unexpected parameter {unexpected[0]!r}"
                              f" ({len(unexpected)} unexpected)")
    for key, value in weights.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{where}: parameter {key!r} has shape {list(value.shape)} in the file but"
                                  f" {list(expected[key].shape)} in the model built from config.json")
    policy.load_state_dict(weights, strict=True)


def checkpoint_hash(directory: str | Path) -> str:
    """Content hash of a policy checkpoint (config + weights), recorded by evaluations."""
    directory = Path(directory)
    return sha256_files([directory / CONFIG_FILE, directory / WEIGHTS_FILE])


def _require(observation: Mapping[str, Any], key: str) -> Any:
    if key not in observation:
        raise ObservationError(f"observation is missing {key!r}; it has {sorted(k for k in observation)}")
    return observation[key]
