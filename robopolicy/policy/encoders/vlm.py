"""A pretrained vision-language model (VLM) as the observation encoder: the VLA recipe.

    cameras at step t ─┐
                       ├─ processor ─> VLM ─> hidden states of layer L ─> last max_tokens ─> LayerNorm+Linear ─┐
    task instruction ──┘                        (B, n_i, hidden)                                              ├─> tokens (B, N+1, dim)
    state at step t ──────────────────────────────────────────────────────────── MLP ─> state token ─────────┘

The images of every camera at the current (last) observation step and the task string go through
the model's own processor, with the family's prompt format (image placeholders first, then the
instruction), into the model's base network (the language-modelling head is dropped: only hidden
states are used) with `output_hidden_states=True`. The hidden states of decoder layer `vlm.layer`
(index into embeddings + N layer outputs, negative counts from the end; the last one is after the
final norm) are the conditioning, as in pi0 and SmolVLA: the action head — the "action expert",
the transformer denoiser of a diffusion / flow head, or ACT — cross-attends to [VLM tokens, state
token]. `vlm.num_layers` keeps only the first N decoder layers (SmolVLA's truncation): the later
layers are deleted from the module, so they cost neither compute nor memory. Of the prompt, the
last `vlm.max_tokens` tokens are kept. Token counts vary with the prompt, so samples are padded
and `Conditioning.mask` marks the real ones; `pooled` — the masked mean of the projected VLM
tokens next to the state token, 2 * dim — has a fixed size for the U-Net head.

Family differences live in `FAMILIES`, keyed by `config.model_type`: the prompt format, where the
decoder layers and the vision tower live, and processor options. Supported: SmolVLM / Idefics3,
PaliGemma, Qwen2-VL and Qwen2.5-VL. The model is read with `AutoModelForImageTextToText` and
`AutoProcessor`, from a hub id or a local folder alike.

Training modes (`vlm.mode`):
  frozen         nothing of the VLM trains; it runs in eval mode without gradients (the projection,
                 state MLP and head train). Features can be cached on disk (below).
  frozen_vision  the vision tower, its connector and the token-embedding table stay frozen; the
                 decoder layers (and final norm) train.
  lora           LoRA adapters (rank/alpha from the config, via peft) on the decoder's attention and
                 MLP projections train; every original weight stays frozen.
  full           every weight trains.
`gradient_checkpointing` is switched on in the model for the trainable modes. `dtype` "auto" is
bf16 on a CUDA GPU that supports it and float32 otherwise.

Checkpoints: the VLM's frozen weights are not part of this module's state_dict — a rebuilt policy
reads them again from `vlm.model` — while everything that trains (projection, state MLP, LoRA
weights, the decoder in frozen_vision mode, the whole model in full mode) is saved and restored.

Feature cache (frozen mode, `vlm.cache_features`): during training, the VLM features of a
(dataset frame, instruction) pair are computed once and stored under
`$ROBOPOLICY_CACHE_DIR/vlm/<fingerprint>/` (default `~/.cache/robopolicy/vlm/<fingerprint>/`),
one safetensors file per pair. The fingerprint covers the model (id or folder, its config, its
weight files or hub revision), layer / num_layers / max_tokens, dtype, prompt format, processor
and camera keys and sizes; the file name covers the dataset identity (set by
`Policy.from_dataset`), the row (`batch["index"]`) and the instruction. Frozen features are
computed one sample at a time (no padding, no autocast), so a cached feature equals the freshly
computed one bit for bit. Writes go to a temporary file renamed into place. At inference (no
`index` in the batch, or no dataset identity) features are computed directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from robopolicy.errors import ConfigError
from robopolicy.policy.config import PolicySpec
from robopolicy.policy.encoders.base import Conditioning, Encoder
from robopolicy.system import user_cache_dir

CACHE_VERSION = 1
MODES = ("frozen", "frozen_vision", "lora", "full")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Family:
    """How one VLM family is driven. Paths are attribute paths inside the base model (`hf.model`)."""

    language: str  # the decoder: `<language>.layers` are its layers
    vision: tuple[str, ...]  # vision tower and connector / projector (frozen in "frozen_vision")
    image: Callable[[object], str]  # processor -> the placeholder text of one image
    prompt: str  # "{images}" and "{task}" are filled in
    processor_kwargs: dict = field(default_factory=dict)
    lora_targets: str = r"(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"  # inside a decoder layer


_IDEFICS3 = Family(  # SmolVLM is Idefics3 with another vision size: same layout
    language="text_model", vision=("vision_model", "connector"), image=lambda p: p.image_token,
    prompt="User:{images}{task}<end_of_utterance>\nAssistant:",
    processor_kwargs={"do_image_splitting": False})  # one global view per camera, not a grid of tiles
_QWEN_VL = Family(
    language="language_model", vision=("visual",),
    image=lambda p: f"<|vision_start|>{p.image_token}<|vision_end|>",
    prompt="<|im_start|>user\n{images}{task}<|im_end|>\n<|im_start|>assistant\n")

FAMILIES: dict[str, Family] = {
    "idefics3": _IDEFICS3,
    "smolvlm": _IDEFICS3,
    # the processor itself puts <bos> after the images and "\n" after the prefix
    "paligemma": Family(language="language_model", vision=("vision_tower", "multi_modal_projector"),
                        image=lambda p: p.image_token, prompt="{images}{task}"),
    "qwen2_vl": _QWEN_VL,
    "qwen2_5_vl": _QWEN_VL,
}


def resolve_dtype(name: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"vlm.dtype must be auto, float32 or bfloat16, got {name!r}")
    return DTYPES[name]


def cache_root() -> Path:
    return user_cache_dir() / "vlm"


def dataset_identity(dataset) -> str:
    """The dataset folder plus size and mtime of its data and video files: a rewrite changes it."""
    root = Path(dataset.root).resolve()
    files = sorted({*(Path(p).resolve() for p in getattr(dataset, "data_paths", [])), *(root / "videos").rglob("*.mp4")})
    h = hashlib.sha256(str(root).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{root}#{h.hexdigest()[:16]}"


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = getattr(module, part)
    return module


class FeatureCache:
    """VLM features of (dataset, row, instruction) on disk, one safetensors file each."""

    def __init__(self, directory: Path, manifest: dict):
        self.dir = directory
        self.manifest = manifest
        self.hits = 0
        self.misses = 0

    def path(self, dataset_id: str, row: int, task: str) -> Path:
        digest = hashlib.sha256(json.dumps([dataset_id, int(row), task]).encode()).hexdigest()
        return self.dir / digest[:2] / f"{digest[:40]}.safetensors"

    def get(self, dataset_id: str, row: int, task: str) -> torch.Tensor | None:
        from safetensors import SafetensorError, safe_open

        path = self.path(dataset_id, row, task)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                if meta.get("key") != json.dumps([dataset_id, int(row), task]):
                    return None  # a digest collision (or a foreign file): recompute
                return f.get_tensor("features")
        except (FileNotFoundError, SafetensorError, OSError):
            return None

    def put(self, dataset_id: str, row: int, task: str, features: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self.path(dataset_id, row, task)
        path.parent.mkdir(parents=True, exist_ok=True)
        manifest = self.dir / "fingerprint.json"
        if not manifest.is_file():
            _atomic_write(manifest, lambda tmp: tmp.write_text(json.dumps(self.manifest, indent=1, default=str)))
        meta = {"key": json.dumps([dataset_id, int(row), task])}
        _atomic_write(path, lambda tmp: save_file({"features": features.detach().cpu().contiguous()}, str(tmp),
                                                  metadata=meta))


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


class VLMEncoder(Encoder):
    """cameras (last step) + task -> VLM hidden states -> tokens; + a proprioceptive state token."""

    graph_capturable = False  # a large backbone: rarely launch-bound, and it captures poorly

    def __init__(self, spec: PolicySpec):
        super().__init__()
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

        enc = spec.config.encoder
        cfg = enc.vlm
        if not cfg.model:
            raise ConfigError("encoder.vlm.model is empty: give a hub id or a local folder")
        if cfg.mode not in MODES:
            raise ConfigError(f"encoder.vlm.mode must be one of {MODES}, got {cfg.mode!r}")
        if cfg.max_tokens < 1:
            raise ConfigError(f"encoder.vlm.max_tokens must be >= 1, got {cfg.max_tokens}")
        self.cfg = cfg
        self.mode = cfg.mode
        self.dim = enc.dim
        self.camera_keys = spec.keys("camera")
        self.state_keys = spec.keys("state")
        if not self.camera_keys:
            raise ConfigError("the VLM encoder needs at least one camera (encoder.cameras is empty)")
        self.image_sizes = {k: list(spec.shape(k)[:2]) for k in self.camera_keys}
        self.dtype = resolve_dtype(cfg.dtype)
        self.dataset_id: str | None = None  # set by Policy.from_dataset; enables the feature cache

        config = AutoConfig.from_pretrained(cfg.model)
        model_type = config.model_type
        if model_type not in FAMILIES:
            raise ConfigError(f"{cfg.model}: VLM family {model_type!r} is not supported; supported: {sorted(FAMILIES)}")
        self.family = FAMILIES[model_type]
        self.model_type = model_type
        hf = AutoModelForImageTextToText.from_pretrained(cfg.model, config=config, dtype=self.dtype)
        self.processor = AutoProcessor.from_pretrained(cfg.model)
        self.processor.tokenizer.padding_side = "right"  # real tokens keep the positions they have alone
        full_config = hf.config.to_dict()
        self.vlm = hf.model  # the base network: the LM head is never used
        del hf
        language = self.language
        n_layers = len(language.layers)
        if cfg.num_layers is not None:
            if not 1 <= cfg.num_layers <= n_layers:
                raise ConfigError(f"encoder.vlm.num_layers must be in [1, {n_layers}] for {cfg.model}, got {cfg.num_layers}")
            self._truncate(cfg.num_layers)
            n_layers = cfg.num_layers
        if not -(n_layers + 1) <= cfg.layer <= n_layers:
            raise ConfigError(f"encoder.vlm.layer must be in [{-(n_layers + 1)}, {n_layers}] (embeddings + {n_layers}"
                              f" decoder layers), got {cfg.layer}")
        self.layer = cfg.layer
        self.hidden_size = language.config.hidden_size
        self._forward_args = set(inspect.signature(self.vlm.forward).parameters)
        self._setup_mode()

        self.project = nn.Sequential(nn.LayerNorm(self.hidden_size), nn.Linear(self.hidden_size, enc.dim))
        state_dim = sum(spec.input_dim(k) for k in self.state_keys)
        self.state = (nn.Sequential(nn.Linear(state_dim, enc.dim), nn.Mish(), nn.Linear(enc.dim, enc.dim))
                      if state_dim else None)
        self.num_tokens = None  # varies with the prompt; see Conditioning.mask
        self._load_prefix = ""
        self.register_load_state_dict_post_hook(VLMEncoder._forgive_untrained)

        self.cache: FeatureCache | None = None
        if self.mode == "frozen" and cfg.cache_features:
            manifest = self._fingerprint_inputs(full_config)
            digest = hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()[:24]
            self.fingerprint = digest
            self.cache = FeatureCache(cache_root() / digest, manifest)

    # ------------------------------------------------------------------ structure
    @property
    def language(self) -> nn.Module:
        return _get(self.vlm, self.family.language)

    @property
    def vision_modules(self) -> list[nn.Module]:
        return [_get(self.vlm, p) for p in self.family.vision]

    @property
    def pooled_dim(self) -> int:
        return self.dim * (2 if self.state is not None else 1)

    def _truncate(self, n: int) -> None:
        language = self.language
        language.layers = nn.ModuleList(list(language.layers)[:n])
        config = language.config
        config.num_hidden_layers = n
        if getattr(config, "layer_types", None) is not None:
            config.layer_types = list(config.layer_types)[:n]

    def _setup_mode(self) -> None:
        cfg = self.cfg
        if self.mode == "lora":
            from peft import LoraConfig, inject_adapter_in_model

            target = rf"{re.escape(self.family.language)}\.layers\.\d+\.{self.family.lora_targets}"
            lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=0.0, target_modules=target,
                              bias="none")
            self.vlm = inject_adapter_in_model(lora, self.vlm)
        frozen_ids: set[int] = set()
        if self.mode == "frozen_vision":
            for module in [*self.vision_modules, self.vlm.get_input_embeddings()]:
                frozen_ids.update(id(p) for p in module.parameters())
        for name, p in self.vlm.named_parameters():
            trains = {"frozen": False, "full": True, "lora": "lora_" in name,
                      "frozen_vision": name.startswith(self.family.language + ".") and id(p) not in frozen_ids}
            p.requires_grad_(trains[self.mode])
        if self.mode == "frozen":
            self.vlm.eval()
        elif cfg.gradient_checkpointing:
            kwargs = {"use_reentrant": False}
            if hasattr(self.vlm, "activation_checkpointing_enable"):  # transformers >= 5.x name
                self.vlm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                self.vlm.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    def train(self, mode: bool = True) -> "VLMEncoder":
        super().train(mode)
        if self.mode == "frozen":
            self.vlm.eval()
        elif self.mode == "frozen_vision":
            for module in self.vision_modules:
                module.eval()
        return self

    # ------------------------------------------------------------------ checkpoints
    def untrained_keys(self) -> set[str]:
        """state_dict keys (relative to this module) of VLM weights that never train: not saved."""
        keys = {f"vlm.{n}" for n, p in self.vlm.named_parameters(remove_duplicate=False) if not p.requires_grad}
        return keys | {f"vlm.{n}" for n, _ in self.vlm.named_buffers(remove_duplicate=False)}

    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in self.untrained_keys():
            out.pop(prefix + key, None)
        return out

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        self._load_prefix = prefix  # for _forgive_untrained, which runs after the children have loaded
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    @staticmethod
    def _forgive_untrained(module: "VLMEncoder", incompatible) -> None:
        """Frozen VLM weights are absent from checkpoints by design: they are not 'missing'."""
        skip = {module._load_prefix + k for k in module.untrained_keys()}
        incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if k not in skip]

    # ------------------------------------------------------------------ datasets and the cache
    def bind_dataset(self, dataset) -> None:
        """Name the training dataset, so frozen features of its rows can be cached."""
        self.dataset_id = dataset_identity(dataset)

    @property
    def cache_stats(self) -> dict:
        return {"hits": self.cache.hits if self.cache else 0, "misses": self.cache.misses if self.cache else 0}

    def _fingerprint_inputs(self, full_config: dict) -> dict:
        cfg = self.cfg
        source: dict = {"model": cfg.model}
        folder = Path(cfg.model)
        if folder.is_dir():
            source["model"] = str(folder.resolve())
            source["weights"] = [[p.name, p.stat().st_size, p.stat().st_mtime_ns]
                                 for p in sorted(folder.iterdir()) if p.suffix in (".safetensors", ".bin")]
        else:
            source["revision"] = full_config.get("_commit_hash")
        image_processor = getattr(self.processor, "image_processor", None)
        return {"version": CACHE_VERSION, **source, "config": full_config, "layer": cfg.layer,
                "num_layers": cfg.num_layers, "max_tokens": cfg.max_tokens, "dtype": str(self.dtype),
                "cameras": self.camera_keys, "image_sizes": self.image_sizes,
                "prompt": self.prompt(len(self.camera_keys), "{task}"),
                "processor_kwargs": self.family.processor_kwargs,
                "image_processor": image_processor.to_dict() if image_processor is not None else None}

    # ------------------------------------------------------------------ forward
    def prompt(self, n_images: int, task: str) -> str:
        return self.family.prompt.format(images=self.family.image(self.processor) * n_images, task=task)

    def _images(self, batch: dict) -> list[list[np.ndarray]]:
        """Every camera at the last observation step, as uint8 (H, W, 3) arrays, per sample."""
        per_camera = []
        for key in self.camera_keys:
            x = batch[key][:, -1].detach().float().clamp(0.0, 1.0)
            per_camera.append((x * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
        return [[cam[i] for cam in per_camera] for i in range(per_camera[0].shape[0])]

    def _run(self, images: list[list[np.ndarray]], tasks: list[str]) -> list[torch.Tensor]:
        """One padded VLM pass -> per sample (n_i, hidden): the last max_tokens real tokens of layer L."""
        prompts = [self.prompt(len(imgs), task) for imgs, task in zip(images, tasks)]
        inputs = self.processor(text=prompts, images=images, return_tensors="pt", padding=True,
                                **self.family.processor_kwargs)
        device = next(self.vlm.parameters()).device
        real = inputs["attention_mask"].bool().to(device)
        args = {k: (v.to(device, self.dtype) if v.is_floating_point() else v.to(device))
                for k, v in inputs.items() if k in self._forward_args and torch.is_tensor(v)}
        out = self.vlm(**args, output_hidden_states=True, use_cache=False, return_dict=True)
        hidden = out.hidden_states[self.layer]
        return [hidden[i][real[i]][-self.cfg.max_tokens:] for i in range(hidden.shape[0])]

    def _frozen(self, images: list[list[np.ndarray]], tasks: list[str], rows) -> list[torch.Tensor]:
        """Frozen features one sample at a time (exactly reproducible), through the cache if possible."""
        use_cache = self.cache is not None and rows is not None and self.dataset_id is not None
        device = next(self.vlm.parameters()).device
        feats = []
        for i, (imgs, task) in enumerate(zip(images, tasks)):
            row = int(rows[i]) if use_cache else None
            f = self.cache.get(self.dataset_id, row, task) if use_cache else None
            if f is None:
                with torch.no_grad(), _no_autocast(device):
                    f = self._run([imgs], [task])[0]
                if use_cache:
                    self.cache.misses += 1
                    self.cache.put(self.dataset_id, row, task, f)
            else:
                self.cache.hits += 1
                f = f.to(device)
            feats.append(f)
        return feats

    def vlm_features(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The selected hidden states, padded: (B, N, hidden) in the model dtype and the (B, N) real-token mask."""
        images = self._images(batch)
        tasks = [str(t) for t in batch.get("task", [""] * len(images))]
        if self.mode == "frozen":
            rows = batch.get("index")
            feats = self._frozen(images, tasks, None if rows is None else torch.as_tensor(rows).reshape(-1).tolist())
        else:
            feats = self._run(images, tasks)
        lengths = torch.tensor([len(f) for f in feats])
        hidden = pad_sequence(feats, batch_first=True)
        mask = torch.arange(hidden.shape[1])[None, :] < lengths[:, None]
        return hidden, mask.to(hidden.device)

    def forward(self, batch: dict) -> Conditioning:
        """`batch` holds normalized state (B, T, D), images (B, T, 3, H, W) in [0, 1] and "task" strings."""
        hidden, mask = self.vlm_features(batch)
        tokens = self.project(hidden.float())
        weights = mask.unsqueeze(-1).to(tokens.dtype)
        pooled = [(tokens * weights).sum(1) / weights.sum(1).clamp(min=1.0)]
        if self.state is not None:
            state = torch.cat([batch[k][:, -1] for k in self.state_keys], dim=-1).float().to(tokens.device)
            state_token = self.state(state).to(tokens.dtype)
            tokens = torch.cat([tokens, state_token.unsqueeze(1)], dim=1)
            mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
            pooled.append(state_token)
        return Conditioning(tokens=tokens, pooled=torch.cat(pooled, dim=-1), mask=mask)


def _no_autocast(device: torch.device):
    """Frozen features in the model's own dtype, whatever autocast the caller runs under."""
    try:
        return torch.autocast(device.type, enabled=False)
    except RuntimeError:  # a device type without autocast support
        return contextlib.nullcontext()
