"""VLA policies: a pretrained vision-language model as the encoder (robopolicy/policy/encoders/vlm.py).

Every test runs on tiny random models of the real families (tests/vla_models.py) saved to a folder
and read back through `AutoModelForImageTextToText` / `AutoProcessor`, the same code path as a
hub id, with a real WordPiece tokenizer and each family's own processor.
"""

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from conftest import LIFT_VIDEO
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.windows import WindowedDataset, WindowSpec
from robopolicy.errors import ConfigError
from robopolicy.policy.config import EncoderConfig, PolicyConfig, VLMConfig
from robopolicy.policy.encoders.base import Conditioning
from robopolicy.policy.encoders.vlm import VLMEncoder, cache_root
from robopolicy.policy.policy import Policy
from vla_models import BUILDERS

ROWS = [5, 50, 500, 900]
# transformers' SmolVLMProcessor refuses to start without the `num2words` package
NUM2WORDS = pytest.mark.skipif(importlib.util.find_spec("num2words") is None,
                               reason="SmolVLMProcessor needs the num2words package")
# the MiniLM tokenizer declares a truncation max_length that processors pass along with padding=True
pytestmark = pytest.mark.filterwarnings("ignore:`max_length` is ignored:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core box: one thread avoids oversubscription (10x faster here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from transformers.utils import logging

    logging.disable_progress_bar()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def dataset():
    return LeRobotDataset(LIFT_VIDEO)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """tiny(family, layers=2, seed=0) -> folder of a saved tiny model + processor (built once)."""
    built = {}

    def get(family: str, layers: int = 2, seed: int = 0):
        key = (family, layers, seed)
        if key not in built:
            built[key] = BUILDERS[family](tmp_path_factory.mktemp(f"{family}-{layers}-{seed}"), layers=layers,
                                          seed=seed)
        return str(built[key])

    return get


def vla_config(model: str, head: str = "flow", denoiser: str = "transformer", **vlm) -> PolicyConfig:
    cfg = PolicyConfig(head=head, n_obs_steps=2, horizon=8, n_action_steps=4,
                       encoder=EncoderConfig(type="vlm", dim=32, vlm=VLMConfig(model=model, **vlm)))
    cfg.denoiser.type = denoiser
    cfg.denoiser.transformer_dim, cfg.denoiser.transformer_layers, cfg.denoiser.transformer_heads = 32, 1, 2
    cfg.denoiser.unet_dims = [32, 64]
    cfg.act.dim, cfg.act.ff_dim, cfg.act.heads = 32, 64, 2
    cfg.act.encoder_layers, cfg.act.decoder_layers, cfg.act.vae_encoder_layers = 1, 1, 1
    return cfg


def make_policy(dataset, model, seed=0, **kw) -> Policy:
    torch.manual_seed(seed)
    return Policy.from_dataset(vla_config(model, **kw), dataset)


def batch_of(policy, dataset, rows=ROWS) -> dict:
    spec = WindowSpec(policy.config.n_obs_steps, policy.config.horizon, policy.config.first_action_offset)
    return WindowedDataset(dataset, spec.deltas(policy.observation_keys)).get_batch(rows)


def observation(dataset, row) -> dict:
    obs = {"observation.state": dataset.columns["observation.state"][row - 1:row + 1]}
    for key in dataset.camera_keys:
        obs[key] = dataset.frames(key, [row - 1, row])
    return obs


def seeded_loss(policy, batch, seed=123) -> float:
    torch.manual_seed(seed)  # same noise levels / noise / latent every time
    with torch.no_grad():
        return policy(batch)["loss"].item()


def train_steps(policy, batch, steps, lr=1e-3) -> tuple[list[float], set[str], set[str]]:
    """Run `steps` AdamW steps on one batch -> (losses, names that changed, names that got a gradient)."""
    policy.train()
    params = [p for p in policy.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    losses, with_grad = [], set()
    for _ in range(steps):
        loss = policy(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        with_grad |= {n for n, p in policy.named_parameters() if p.grad is not None}
        opt.step()
        losses.append(loss.item())
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p.detach(), before[n])}
    return losses, changed, with_grad


# ---------------------------------------------------------------------------------------------- families x heads
@pytest.mark.parametrize("family,head,denoiser", [
    ("idefics3", "diffusion", "transformer"),
    ("idefics3", "flow", "transformer"),
    ("idefics3", "act", "transformer"),
    ("idefics3", "flow", "unet"),
    pytest.param("smolvlm", "flow", "transformer", marks=NUM2WORDS),
    ("paligemma", "flow", "transformer"),
    ("qwen2_vl", "diffusion", "transformer"),
    ("qwen2_5_vl", "act", "transformer"),
])
def test_family_trains_and_predicts(dataset, tiny, family, head, denoiser):
    policy = make_policy(dataset, tiny(family), head=head, denoiser=denoiser)
    enc = policy.encoder
    assert isinstance(enc, VLMEncoder) and enc.model_type == family
    assert not any(p.requires_grad for p in enc.vlm.parameters())  # frozen is the default mode
    batch = batch_of(policy, dataset)
    cond = enc(policy.normalizer.normalize_batch(batch))
    assert cond.tokens.shape[0] == len(ROWS) and cond.tokens.shape[2] == 32
    assert cond.pooled.shape == (len(ROWS), enc.pooled_dim) == (len(ROWS), 64)
    assert cond.mask.dtype == torch.bool and cond.mask[:, -1].all()  # the state token is always real
    before = seeded_loss(policy, batch)
    losses, changed, _ = train_steps(policy, batch, steps=8)
    assert all(np.isfinite(losses))
    assert any(n.startswith("head.") for n in changed) and any(n.startswith("encoder.project") for n in changed)
    assert seeded_loss(policy, batch) < before  # same noise, same batch: fitting it lowers the loss
    chunk = policy.predict_chunk(observation(dataset, 100), generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (8 + policy.config.first_action_offset, 7) and chunk.dtype == np.float32
    assert np.isfinite(chunk).all()


def test_prompt_holds_every_camera_and_the_instruction(dataset, tiny):
    policy = make_policy(dataset, tiny("idefics3"))
    enc = policy.encoder
    prompt = enc.prompt(2, "lift the red cube")
    assert prompt.count(enc.processor.image_token) == 2 and "lift the red cube" in prompt
    batch = batch_of(policy, dataset, [50])
    hidden, mask = enc.vlm_features(policy.normalizer.normalize_batch(batch))
    images = [[f[-1] for f in (dataset.frames(k, [50]) for k in dataset.camera_keys)]]
    ids = enc.processor(text=[prompt], images=images, return_tensors="pt", do_image_splitting=False)["input_ids"][0]
    assert (ids == enc.processor.image_token_id).sum() == 2 * enc.processor.image_seq_len
    assert hidden.shape == (1, len(ids), enc.hidden_size) and mask.all()  # every prompt token, one per row
    # max_tokens keeps the LAST tokens
    short = make_policy(dataset, tiny("idefics3"), max_tokens=5).encoder
    cut, cut_mask = short.vlm_features(policy.normalizer.normalize_batch(batch))
    assert cut.shape == (1, 5, enc.hidden_size) and torch.equal(cut[0], hidden[0, -5:])


# ---------------------------------------------------------------------------------------------- training modes
def _expected_trainable(enc: VLMEncoder, mode: str) -> set[str]:
    names = [n for n, _ in enc.vlm.named_parameters()]
    return {
        "frozen": set(),
        "frozen_vision": {n for n in names if n.startswith("text_model.layers.") or n.startswith("text_model.norm.")},
        "lora": {n for n in names if ".lora_A." in n or ".lora_B." in n},
        "full": set(names),
    }[mode]


@pytest.mark.parametrize("mode", ["frozen", "frozen_vision", "lora", "full"])
def test_training_mode_trains_exactly_its_parameters(dataset, tiny, mode):
    policy = make_policy(dataset, tiny("idefics3"), mode=mode, gradient_checkpointing=mode != "frozen")
    enc = policy.encoder
    trainable = {n for n, p in enc.vlm.named_parameters() if p.requires_grad}
    assert trainable == _expected_trainable(enc, mode)
    if mode == "lora":  # adapters on every attention / MLP projection of every decoder layer, nowhere else
        adapted = {n.split(".lora_")[0] for n in trainable}
        expected = {f"text_model.layers.{i}.{m}" for i in range(2) for m in
                    ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                     "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]}
        assert adapted == expected
    if mode == "frozen_vision":
        assert not any(p.requires_grad for p in enc.vlm.vision_model.parameters())
        assert not any(p.requires_grad for p in enc.vlm.connector.parameters())
        assert not enc.vlm.get_input_embeddings().weight.requires_grad
    policy.train()
    assert enc.vlm.training == (mode != "frozen")  # frozen VLMs stay in eval mode (no dropout)
    assert enc.vlm.vision_model.training == (mode in ("lora", "full"))
    if mode != "frozen":
        assert getattr(enc.vlm, "is_activation_checkpointing", None) or enc.vlm.is_gradient_checkpointing
    # two steps (LoRA's A only gets a gradient once B left zero), then: changed == requires_grad
    _, changed, with_grad = train_steps(policy, batch_of(policy, dataset), steps=2)
    requires_grad = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert changed == requires_grad == with_grad
    assert {n for n in changed if n.startswith("encoder.vlm.")} == {f"encoder.vlm.{n}" for n in trainable}


# ---------------------------------------------------------------------------------------------- layers
def test_num_layers_truncates_and_layer_selects(dataset, tiny):
    full = make_policy(dataset, tiny("idefics3", layers=2), layer=-1)
    cut = make_policy(dataset, tiny("idefics3", layers=2), num_layers=1, layer=-1)
    assert len(full.encoder.language.layers) == 2 and len(cut.encoder.language.layers) == 1
    assert cut.encoder.language.config.num_hidden_layers == 1
    assert not any(".layers.1." in n for n, _ in cut.encoder.vlm.named_parameters())
    per_layer = sum(p.numel() for p in full.encoder.language.layers[1].parameters())
    assert (sum(p.numel() for p in full.encoder.vlm.parameters())
            - sum(p.numel() for p in cut.encoder.vlm.parameters())) == per_layer

    batch = full.normalizer.normalize_batch(batch_of(full, dataset, [50, 500]))
    last, mask = full.encoder.vlm_features(batch)
    first = make_policy(dataset, tiny("idefics3", layers=2), layer=1).encoder.vlm_features(batch)[0]
    embeddings = make_policy(dataset, tiny("idefics3", layers=2), layer=0).encoder.vlm_features(batch)[0]
    assert not torch.allclose(last, first) and not torch.allclose(first, embeddings)
    assert torch.equal(make_policy(dataset, tiny("idefics3", layers=2), layer=-3).encoder.vlm_features(batch)[0],
                       embeddings)  # negative indices count from the end: -3 of [emb, l1, l2]
    # the truncated model's output is layer 1 of the full model, through the final norm
    truncated = cut.encoder.vlm_features(batch)[0]
    with torch.no_grad():
        normed = full.encoder.language.norm(first)
    assert torch.allclose(truncated[mask], normed[mask], atol=1e-5)
    with pytest.raises(ConfigError, match="layer"):
        make_policy(dataset, tiny("idefics3", layers=2), num_layers=1, layer=2)
    with pytest.raises(ConfigError, match="num_layers"):
        make_policy(dataset, tiny("idefics3", layers=2), num_layers=3)


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("mode", ["frozen", "lora", "frozen_vision", "full"])
def test_save_load_reproduces_predictions(dataset, tiny, tmp_path, mode):
    policy = make_policy(dataset, tiny("idefics3"), mode=mode, cache_features=False)
    train_steps(policy, batch_of(policy, dataset), steps=2)
    obs = observation(dataset, 300)
    chunk = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    policy.save(tmp_path / "ckpt")
    with safe_open(str(tmp_path / "ckpt" / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        vlm_keys = {k.removeprefix("encoder.vlm.") for k in keys if k.startswith("encoder.vlm.")}
        assert vlm_keys == _expected_trainable(policy.encoder, mode)  # frozen weights are not written
        if mode == "lora":
            assert any(f.get_tensor(k).abs().sum() > 0 for k in keys if ".lora_B." in k)  # trained, not init
    assert keys == set(policy.state_dict())
    assert any(k.startswith("encoder.project.") for k in keys) and any(k.startswith("encoder.state.") for k in keys)
    loaded = Policy.load(tmp_path / "ckpt")
    again = loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    assert np.array_equal(chunk, again)
    if mode in ("lora", "full"):  # the trained VLM weights matter: without them the output differs
        fresh = Policy.load(tmp_path / "ckpt")
        with torch.no_grad():
            for name, p in fresh.encoder.vlm.named_parameters():
                if p.requires_grad and (mode == "full" or ".lora_B." in name):
                    p.zero_()
        assert not np.allclose(fresh.predict_chunk(obs, generator=torch.Generator().manual_seed(7)), chunk)


def test_lora_checkpoint_rebuilds_adapters_on_load(dataset, tiny, tmp_path):
    policy = make_policy(dataset, tiny("qwen2_vl"), mode="lora", lora_rank=4, lora_alpha=8, head="act")
    train_steps(policy, batch_of(policy, dataset), steps=2)
    obs = observation(dataset, 40)
    chunk = policy.predict_chunk(obs)
    policy.save(tmp_path / "ckpt")
    loaded = Policy.load(tmp_path / "ckpt")
    a = loaded.encoder.vlm.language_model.layers[0].self_attn.q_proj.lora_A["default"].weight
    assert a.shape == (4, 64)
    assert np.array_equal(loaded.predict_chunk(obs), chunk)


# ---------------------------------------------------------------------------------------------- feature cache
def _cache_files(encoder) -> list:
    return sorted(encoder.cache.dir.rglob("*.safetensors"))


def test_feature_cache_hits_and_equals_uncached(dataset, tiny):
    policy = make_policy(dataset, tiny("idefics3", seed=3))
    enc = policy.encoder
    assert enc.dataset_id is not None and str(LIFT_VIDEO.resolve()) in enc.dataset_id
    assert enc.cache.dir == cache_root() / enc.fingerprint
    assert cache_root() == Path(os.environ["ROBOPOLICY_CACHE_DIR"]) / "vlm"  # conftest: one folder per session
    batch = policy.normalizer.normalize_batch(batch_of(policy, dataset, [3, 40, 200]))
    first, mask = enc.vlm_features(batch)
    assert enc.cache_stats == {"hits": 0, "misses": 3}
    files = _cache_files(enc)
    assert len(files) == 3 and (enc.cache.dir / "fingerprint.json").is_file()
    assert not list(enc.cache.dir.rglob("*.tmp"))
    assert json.loads((enc.cache.dir / "fingerprint.json").read_text())["layer"] == -1
    second, _ = enc.vlm_features(batch)
    assert enc.cache_stats == {"hits": 3, "misses": 3}
    assert torch.equal(first, second)
    # uncached: no dataset row ids (inference) -> computed directly, counters untouched, same values
    direct, direct_mask = enc.vlm_features({k: v for k, v in batch.items() if k != "index"})
    assert enc.cache_stats == {"hits": 3, "misses": 3}
    assert torch.equal(direct, first) and torch.equal(direct_mask, mask)
    off = make_policy(dataset, tiny("idefics3", seed=3), cache_features=False).encoder
    assert off.cache is None and torch.equal(off.vlm_features(batch)[0], first)
    # the cache lives on disk: a new encoder of the same model hits
    again = make_policy(dataset, tiny("idefics3", seed=3)).encoder
    assert torch.equal(again.vlm_features(batch)[0], first) and again.cache_stats == {"hits": 3, "misses": 0}
    # a damaged file is recomputed, not trusted
    files[0].write_bytes(b"garbage")
    assert torch.equal(again.vlm_features(batch)[0], first) and again.cache_stats == {"hits": 5, "misses": 1}
    # the cached path trains exactly like the uncached one
    full_batch = batch_of(policy, dataset, [3, 40, 200])
    policy_off = make_policy(dataset, tiny("idefics3", seed=3), cache_features=False)
    policy_off.load_state_dict(policy.state_dict())
    assert seeded_loss(policy, full_batch) == seeded_loss(policy_off, full_batch)


def test_feature_cache_invalidation(dataset, tiny):
    base = make_policy(dataset, tiny("idefics3", seed=4)).encoder
    policy = make_policy(dataset, tiny("idefics3", seed=4))
    batch = policy.normalizer.normalize_batch(batch_of(policy, dataset, [10, 20]))
    reference = base.vlm_features(batch)[0]
    assert base.cache_stats == {"hits": 0, "misses": 2}
    # another instruction: other files
    other_task = dict(batch, task=["push the cube"] * 2)
    changed = base.vlm_features(other_task)[0]
    assert base.cache_stats == {"hits": 0, "misses": 4} and not torch.equal(changed, reference)
    assert len(_cache_files(base)) == 4
    # another layer, another model, another max_tokens: other fingerprints
    for variant in [make_policy(dataset, tiny("idefics3", seed=4), layer=-2).encoder,
                    make_policy(dataset, tiny("idefics3", seed=5)).encoder,
                    make_policy(dataset, tiny("idefics3", seed=4), max_tokens=8).encoder,
                    make_policy(dataset, tiny("idefics3", seed=4), num_layers=1).encoder]:
        assert variant.fingerprint != base.fingerprint
        out = variant.vlm_features(batch)[0]
        assert variant.cache_stats == {"hits": 0, "misses": 2}
        assert not torch.equal(out, reference)
    # the same model, layer and instruction hit again
    assert torch.equal(base.vlm_features(batch)[0], reference) and base.cache_stats["hits"] == 2


def test_inference_never_uses_the_cache(dataset, tiny):
    policy = make_policy(dataset, tiny("idefics3", seed=3))
    policy.predict_chunk(observation(dataset, 70))
    assert policy.encoder.cache_stats == {"hits": 0, "misses": 0}


# ---------------------------------------------------------------------------------------------- masks
def _single(cond: Conditioning, i: int) -> Conditioning:
    keep = cond.mask[i]
    return Conditioning(cond.tokens[i:i + 1, keep], cond.pooled[i:i + 1])


def test_padded_batch_matches_single_samples_in_the_heads(dataset, tiny):
    policy = make_policy(dataset, tiny("paligemma"))
    policy.eval()
    batch = policy.normalizer.normalize_batch(batch_of(policy, dataset, [30, 31]))
    batch["task"] = ["lift", "lift the red cube slowly and carefully, then hold it above the table"]
    with torch.no_grad():
        cond = policy.encoder(batch)
        assert cond.mask.shape == cond.tokens.shape[:2]
        assert cond.mask[1].all() and not cond.mask[0].all()  # the short prompt is padded
        for i in range(2):  # per-sample frozen features: identical with or without the batch
            one = policy.encoder({k: (v[i:i + 1] if torch.is_tensor(v) else v[i:i + 1]) for k, v in batch.items()})
            assert torch.allclose(one.tokens[0], cond.tokens[i, cond.mask[i]], atol=1e-6)
            assert torch.allclose(one.pooled[0], cond.pooled[i], atol=1e-6)
        denoiser = policy.head.denoiser
        x = torch.randn(2, 8, 7)
        t = torch.tensor([0.3, 0.8]) * 1000
        padded = denoiser(x, t, cond)
        unmasked = denoiser(x, t, Conditioning(cond.tokens, cond.pooled))  # padding attended: wrong
        for i in range(2):
            alone = denoiser(x[i:i + 1], t[i:i + 1], _single(cond, i))
            assert torch.allclose(padded[i], alone[0], atol=1e-5)
        assert not torch.allclose(unmasked[0], padded[0], atol=1e-4)


def test_act_respects_the_mask(dataset, tiny):
    policy = make_policy(dataset, tiny("idefics3"), head="act")
    policy.eval()
    batch = policy.normalizer.normalize_batch(batch_of(policy, dataset, [30, 31]))
    batch["task"] = ["lift", "lift the red cube slowly and carefully, then hold it above the table"]
    with torch.no_grad():
        cond = policy.encoder(batch)
        out = policy.head.sample(cond)
        for i in range(2):
            assert torch.allclose(out[i], policy.head.sample(_single(cond, i))[0], atol=1e-5)
        assert not torch.allclose(policy.head.sample(Conditioning(cond.tokens, cond.pooled))[0], out[0], atol=1e-4)


@pytest.mark.parametrize("family", ["idefics3", pytest.param("smolvlm", marks=NUM2WORDS), "paligemma", "qwen2_vl",
                                    "qwen2_5_vl"])
def test_batched_trainable_features_match_single_samples(dataset, tiny, family):
    """Trainable modes run the VLM on a right-padded batch: real tokens must not see the padding."""
    policy = make_policy(dataset, tiny(family), mode="lora")
    policy.eval()
    batch = policy.normalizer.normalize_batch(batch_of(policy, dataset, [30, 31]))
    batch["task"] = ["lift", "lift the red cube slowly and carefully, then hold it above the table"]
    with torch.no_grad():
        hidden, mask = policy.encoder.vlm_features(batch)
        assert mask.sum(1)[0] < mask.sum(1)[1]
        for i in range(2):
            one, one_mask = policy.encoder.vlm_features(
                {k: (v[i:i + 1] if torch.is_tensor(v) else v[i:i + 1]) for k, v in batch.items()})
            assert one_mask.all() and one.shape[1] == mask[i].sum()
            assert torch.allclose(one[0], hidden[i, mask[i]], atol=1e-4)


def test_conditioning_repeat_keeps_the_mask():
    cond = Conditioning(torch.randn(2, 3, 4), torch.randn(2, 8), torch.tensor([[True, False, True], [True] * 3]))
    rep = cond.repeat(3)
    assert rep.mask.shape == (6, 3) and torch.equal(rep.mask[:3], cond.mask[:1].expand(3, -1))
    assert Conditioning(torch.randn(2, 3, 4), torch.randn(2, 8)).repeat(2).mask is None


# ---------------------------------------------------------------------------------------------- config
def test_bfloat16_backbone(dataset, tiny):
    policy = make_policy(dataset, tiny("qwen2_5_vl"), dtype="bfloat16")
    assert next(policy.encoder.vlm.parameters()).dtype == torch.bfloat16
    batch = policy.normalizer.normalize_batch(batch_of(policy, dataset, [10]))
    hidden, _ = policy.encoder.vlm_features(batch)
    assert hidden.dtype == torch.bfloat16
    assert policy.encoder(batch).tokens.dtype == torch.float32  # projection and heads stay float32
    assert np.isfinite(policy.predict_chunk(observation(dataset, 10))).all()


def test_bad_vlm_configs_are_rejected(dataset, tiny, tmp_path):
    from transformers import LlavaConfig

    LlavaConfig().save_pretrained(tmp_path / "llava")  # a VLM family without an entry in FAMILIES
    with pytest.raises(ConfigError, match="'llava' is not supported"):
        make_policy(dataset, str(tmp_path / "llava"))
    with pytest.raises(ConfigError, match="vlm.model"):
        make_policy(dataset, "")
    with pytest.raises(ConfigError, match="mode"):
        make_policy(dataset, tiny("idefics3"), mode="half")
    with pytest.raises(ConfigError, match="camera"):
        torch.manual_seed(0)
        cfg = vla_config(tiny("idefics3"))
        cfg.encoder.cameras = []
        Policy.from_dataset(cfg, dataset)


# ---------------------------------------------------------------------------------------------- the trainer
@pytest.mark.parametrize("ema", [False, True])
def test_trainer_runs_a_vla(dataset, tiny, tmp_path, ema):
    from robopolicy.config import load_config
    from robopolicy.train.trainer import train

    cfg = load_config(None, [f"data.path={LIFT_VIDEO}", f"output_dir={tmp_path}", "name=vla", "policy.head=flow",
                             "policy.encoder.type=vlm", "policy.encoder.dim=32",
                             f"policy.encoder.vlm.model={tiny('idefics3', seed=6)}",
                             "policy.denoiser.type=transformer", "policy.denoiser.transformer_dim=32",
                             "policy.denoiser.transformer_layers=1", "policy.horizon=8", "policy.n_action_steps=4",
                             "train.steps=4", "train.batch_size=4", "train.save_every=4", "train.progress=false",
                             f"train.ema={str(ema).lower()}", "train.num_threads=1", "train.log_every=2"])
    result = train(cfg)
    assert np.isfinite(result.final_loss)
    loaded = Policy.load(result.checkpoint)
    assert np.isfinite(loaded.predict_chunk(observation(dataset, 100))).all()
