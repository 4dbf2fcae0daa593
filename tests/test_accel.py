"""Inference accelerators: ONNX Runtime and bf16 camera trunks on a CPU keep the chunks and the checkpoint."""

import numpy as np
import pytest
import torch

from policy_helpers import dataset, observation, small_config  # noqa: F401,F811  (dataset: a fixture)
from robopolicy.errors import ConfigError
from robopolicy.policy.policy import Policy
from robopolicy.data.windows import WindowedDataset, WindowSpec


@pytest.mark.slow
@pytest.mark.parametrize("head", ["flow", "diffusion", "act"])
def test_compiling_for_cpu_runs_onnx_runtime_and_keeps_the_chunks(dataset, tmp_path, head):
    """On a CPU, compile_for_inference moves the camera encoders and the U-Net into ONNX Runtime."""
    from robopolicy.policy.accel.onnx_cpu import OnnxCameraEncoder, OnnxUNet

    torch.manual_seed(0)
    cfg = small_config(head)
    cfg.encoder.vision.shared = head != "diffusion"  # one trunk per camera, for one of them
    if head == "act":  # ACT's own tokenization: one token per cell of the feature map
        cfg.encoder.vision.tokens, cfg.encoder.vision.feature_grid = "feature_map", 2
    policy = Policy.from_dataset(cfg, dataset).eval()
    obs = observation(dataset, 100, 2)
    committed = np.zeros((3, 7), np.float32)
    expected = [policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3)),
                policy.predict_chunk(obs, prefix=committed, generator=torch.Generator().manual_seed(3))]
    batch = WindowedDataset(dataset, WindowSpec(2, 16, policy.config.first_action_offset)
                            .deltas(policy.observation_keys)).get_batch([5, 50, 80, 120])
    with torch.no_grad():
        expected_batch = policy.sample_actions(batch, generator=torch.Generator().manual_seed(3))

    eager_weights = {k: v.clone() for k, v in policy.state_dict().items()}
    assert policy.compile_for_inference() is policy
    cameras = policy.encoder.vision.camera_encoders()
    assert len(cameras) == (2 if head == "diffusion" else 1)
    assert all(isinstance(m, OnnxCameraEncoder) for m in cameras)
    assert isinstance(getattr(policy.head, "denoiser", None), OnnxUNet) == (head != "act")
    compiled = cameras + ([policy.head.denoiser] if head != "act" else [])
    # the stand-ins hold the same weights under the same names
    weights = policy.state_dict()
    assert list(weights) == list(eager_weights)
    assert all(torch.equal(weights[k], eager_weights[k]) for k in weights)
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
    assert all(1 in m.call.sessions for m in compiled)
    with torch.no_grad():  # a batch of 4, though the graphs were exported at another batch size
        np.testing.assert_allclose(policy.sample_actions(batch, generator=torch.Generator().manual_seed(3)),
                                   expected_batch, atol=1e-4, rtol=1e-4)
    if head != "act":  # batch-1 U-Net steps ran on one thread, the batch of 4 on PyTorch's thread count
        assert set(policy.head.denoiser.call.sessions) == {1, threads}
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
    from robopolicy.policy.accel.bf16_vision import Bf16CameraEncoder
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
    assert isinstance(camera, Bf16CameraEncoder)
    threads = torch.get_num_threads()
    assert list(camera.trunk_bf16.compiled) == [threads]  # compiled by inductor (a C++ compiler is here)
    got = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    span = np.asarray(policy.stats["action"]["max"]) - np.asarray(policy.stats["action"]["min"])
    error = np.abs(got - expected)[:, span > 0] / span[span > 0]
    assert 0 < error.max() < 0.02, error.max()  # bf16 rounding, not a different policy
    torch.set_num_threads(1)  # the deployment runtime's cap: kernels compiled for one thread
    try:
        capped = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(3))
    finally:
        torch.set_num_threads(threads)
    assert set(camera.trunk_bf16.compiled) == {1, threads}
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
    cfg.encoder.vision.keypoint_language_film = True  # the keypoints' projection FiLM-ed too
    tasks = ["put the red cube in the bowl", "put the blue cube in the bowl"]
    spec = dataclasses.replace(Policy.from_dataset(cfg, dataset).spec, tasks=tasks)
    policy = Policy(spec, dataset.stats).eval()
    torch.nn.init.normal_(policy.encoder.vision.camera_encoders()[0].film.map.weight, std=0.1)
    torch.nn.init.normal_(policy.encoder.vision.camera_encoders()[0].project_film.weight, std=0.1)
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
