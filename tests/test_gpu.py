"""On a CUDA machine: policies train there in bf16 and give the chunks the CPU gives.

They need a CUDA GPU and are skipped without one; everything they exercise besides the device
(heads, trainer, checkpoints) is covered by the CPU suite.
"""

import json

import numpy as np
import pytest
import torch

from helpers import tiny_config
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.policy.policy import Policy
from robopolicy.train.logger import read_metrics
from robopolicy.train.trainer import train
from test_policy import observation, small_config
from conftest import LIFT_VIDEO

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("head", ["diffusion", "flow", "act"])
def test_chunks_on_cuda_match_the_cpu(head):
    """A CPU generator seeds the same noise on either device, so a checkpoint acts the same on both."""
    dataset = LeRobotDataset(LIFT_VIDEO)
    torch.manual_seed(0)
    policy = Policy.from_dataset(small_config(head), dataset).eval()
    obs = observation(dataset, 100, policy.config.n_obs_steps)
    on_cpu = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    on_cuda = policy.to("cuda").predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    assert on_cuda.shape == on_cpu.shape
    np.testing.assert_allclose(on_cuda, on_cpu, atol=2e-3)


@pytest.mark.parametrize("head", ["diffusion", "flow", "act"])
def test_training_on_cuda_uses_bf16_and_learns(tmp_path, head):
    cfg = tiny_config(tmp_path, head, images=True, extra=["train.steps=300", "train.device=cuda"])
    result = train(cfg)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["device"] == "cuda" and summary["precision"] == "torch.bfloat16"
    losses = [r["loss"] for r in read_metrics(result.run_dir)]
    assert losses[-1] < 0.5 * losses[0], losses
    policy = Policy.load(result.checkpoint)  # trained on the GPU, loads on the CPU
    assert next(policy.parameters()).device.type == "cpu"


@pytest.mark.parametrize("head", ["diffusion", "flow", "act"])
def test_compiled_policy_gives_the_eager_chunks_from_any_thread(head):
    """CUDA graphs change the speed, not the actions; the async runtime and the server call from threads."""
    import threading

    dataset = LeRobotDataset(LIFT_VIDEO)
    torch.manual_seed(0)
    policy = Policy.from_dataset(small_config(head), dataset).to("cuda").eval()
    obs = observation(dataset, 100, policy.config.n_obs_steps)
    eager = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    policy.compile_for_inference()
    for _ in range(3):  # compiling, recording, replaying
        compiled = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
        np.testing.assert_allclose(compiled, eager, atol=2e-3)
    from_thread = {}
    worker = threading.Thread(target=lambda: from_thread.update(
        chunk=policy.predict_chunk(obs, generator=torch.Generator().manual_seed(7))))
    worker.start()
    worker.join()
    np.testing.assert_allclose(from_thread["chunk"], eager, atol=2e-3)
