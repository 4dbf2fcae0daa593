"""VLA cost on this machine: training step and chunk inference with a vision-language backbone.

  python bench/bench_vla.py [--skip-500m]

Models are built from their transformers configs with random weights (no hub access here): the
tiny test models of every family (tests/vla_models.py) and a ~500M-parameter SmolVLM2-500M-shaped
model (SigLIP-B/16 at 512 px + a 32-layer, 960-wide Llama, 4x pixel shuffle). One camera image,
flow head with a transformer action expert, batch 8 for training, batch 1 for inference.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from benchlib import median_ms  # noqa: E402
from vla_models import _ids, _save, bert_tokenizer, build_idefics3, build_paligemma, build_qwen2_vl  # noqa: E402

from robopolicy.policy.config import EncoderConfig, FeatureSpec, PolicyConfig, PolicySpec, VLMConfig  # noqa: E402
from robopolicy.policy.policy import Policy  # noqa: E402


def build_smolvlm_500m(folder: Path) -> Path:
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    tok = bert_tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"])
    image, patch, scale = 512, 16, 4
    config = Idefics3Config(
        vision_config={"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                       "num_attention_heads": 12, "image_size": image, "patch_size": patch},
        text_config={"model_type": "llama", "hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32,
                     "num_attention_heads": 15, "num_key_value_heads": 5, "max_position_embeddings": 8192,
                     "tie_word_embeddings": True, **_ids(tok)},
        scale_factor=scale, image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=True, **_ids(tok))
    processor = Idefics3Processor(
        Idefics3ImageProcessor(size={"longest_edge": image}, max_image_size={"longest_edge": image},
                               do_image_splitting=False),
        tok, image_seq_len=(image // patch) ** 2 // scale ** 2)
    return _save(folder, Idefics3ForConditionalGeneration, config, processor, seed=0)


def make_policy(model: Path, mode: str, image: int) -> Policy:
    cfg = PolicyConfig(head="flow", n_obs_steps=1, horizon=16, action_offset=0, n_action_steps=8,
                       encoder=EncoderConfig(type="vlm", dim=256, cameras=["observation.images.front"],
                                             vlm=VLMConfig(model=str(model), mode=mode, cache_features=False)))
    cfg.denoiser.type, cfg.denoiser.transformer_dim, cfg.denoiser.transformer_layers = "transformer", 256, 4
    features = [FeatureSpec("observation.state", [9], "state"), FeatureSpec("observation.images.front", [image, image, 3], "camera"),
                FeatureSpec("action", [7], "action")]
    stats = {"observation.state": {"min": np.full(9, -1.0), "max": np.full(9, 1.0)},
             "action": {"min": np.full(7, -1.0), "max": np.full(7, 1.0)}}
    return Policy(PolicySpec(config=cfg, features=features, tasks=["lift the red cube"]), stats=stats)


def measure(policy: Policy, image: int, batch_size: int = 8, repeats: int = 3) -> tuple[float, float, float]:
    batch = {"observation.state": torch.zeros(batch_size, 1, 9), "action": torch.zeros(batch_size, 16, 7),
             "observation.images.front": torch.rand(batch_size, 1, 3, image, image),
             "task": ["lift the red cube"] * batch_size}
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-4)

    def train_step() -> None:
        loss = policy(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()

    train_ms = median_ms(train_step, repeats)
    obs = {"observation.state": np.zeros(9, np.float32),
           "observation.images.front": np.random.default_rng(0).integers(0, 255, (image, image, 3), dtype=np.uint8),
           "task": "lift the red cube"}
    policy.eval()
    inference_ms = median_ms(lambda: policy.predict_chunk(obs), repeats)
    params_m = sum(p.numel() for p in policy.encoder.parameters()) / 1e6
    return train_ms, inference_ms, params_m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-500m", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = [("tiny idefics3", build_idefics3(tmp / "i"), 32), ("tiny paligemma", build_paligemma(tmp / "p"), 32),
                  ("tiny qwen2-vl", build_qwen2_vl(tmp / "q"), 32)]
        if not args.skip_500m:
            models.append(("SmolVLM2-500M-shaped", build_smolvlm_500m(tmp / "s"), 512))
        for name, path, image in models:
            for mode in ("frozen", "lora"):
                policy = make_policy(path, mode, image)
                bs = 8 if image <= 64 else 2
                step_ms, chunk_ms, params_m = measure(policy, image, batch_size=bs)
                print(f"{name:<22} {mode:<7} {params_m:7.1f}M: train step (batch {bs}, no cache) {step_ms:8.0f} ms,"
                      f" chunk (flow-10, 1 image) {chunk_ms:7.0f} ms", flush=True)


if __name__ == "__main__":
    main()
