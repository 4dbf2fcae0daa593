"""Training: every head learns, overfits a tiny dataset, resumes exactly after a kill, runs under DDP."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import LIFT_VIDEO
from helpers import tiny_config
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.errors import ConfigError
from robopolicy.policy.policy import Policy
from robopolicy.system import cpu_supports_bf16
from robopolicy.train.logger import read_metrics
from robopolicy.train.trainer import train

pytestmark = pytest.mark.slow
HEADS = ["diffusion", "flow", "act"]


@pytest.mark.parametrize("head", HEADS)
def test_each_head_learns_from_images_on_the_lerobot_fixture(tmp_path, head):
    cfg = tiny_config(tmp_path, head, images=True, extra=["train.steps=300", "train.save_every=300"])
    result = train(cfg)
    losses = [r["loss"] for r in read_metrics(result.run_dir)]
    assert losses[-1] < 0.5 * losses[0], losses
    # the exported checkpoint alone reproduces the trained policy's actions for the same input and seed
    ds = LeRobotDataset(LIFT_VIDEO)
    a, b = result.policy, Policy.load(result.checkpoint)
    n = a.config.n_obs_steps
    obs = {"observation.state": ds.columns["observation.state"][200 - n + 1:201]}
    obs.update({k: ds.frames(k, np.arange(200 - n + 1, 201)) for k in ds.camera_keys})
    first = a.predict_chunk(obs, generator=torch.Generator().manual_seed(0))
    second = b.predict_chunk(obs, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(first, second, atol=1e-5)  # channels_last in memory vs contiguous loaded
    for name in ("config.yaml", "metrics.jsonl", "loss.png", "summary.json"):
        assert (result.run_dir / name).is_file(), name
    # precision auto: an image policy autocasts to bf16 on a CPU that has bf16 units
    expected = "torch.bfloat16" if cpu_supports_bf16() else "fp32"
    assert json.loads((result.run_dir / "summary.json").read_text())["precision"] == expected


@pytest.mark.parametrize("head", HEADS)
def test_each_head_overfits_one_episode(tmp_path, head):
    # sample prediction: epsilon-prediction diffusion needs ~5x more steps to overfit this far
    extra = {"diffusion": ["policy.diffusion.prediction_type=sample"],
             "flow": ["train.lr=3e-3", "train.batch_size=32"]}.get(head, [])
    cfg = tiny_config(tmp_path, head, extra=["train.steps=500", "train.save_every=500", "data.episodes=[0]",
                                             "train.ema=false", "train.batch_size=16"] + extra)
    result = train(cfg)
    # precision auto: a policy without images trains in fp32 on a CPU (autocast only slows it there)
    assert json.loads((result.run_dir / "summary.json").read_text())["precision"] == "fp32"
    policy = Policy.load(result.checkpoint)
    ds = LeRobotDataset(LIFT_VIDEO)
    keys = policy.spec.keys("state")
    n = policy.config.n_obs_steps
    errors = []
    for t in range(n, int(ds.episodes.length[0]) - 8):
        obs = {k: ds.columns[k][t - n + 1:t + 1] for k in keys}
        chunk = policy.predict_chunk(obs, generator=torch.Generator().manual_seed(t))
        errors.append(np.abs(chunk[:8] - ds.columns["action"][t:t + 8]).mean())
    assert float(np.mean(errors)) < 0.1, float(np.mean(errors))


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "robopolicy.cli", "train", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def test_resume_after_kill_matches_an_uninterrupted_run(tmp_path):
    common = [f"data.path={LIFT_VIDEO}", f"output_dir={tmp_path}", "train.steps=300", "train.save_every=20",
              "train.batch_size=16", "train.progress=false", "policy.encoder.cameras=[]", "policy.encoder.dim=32",
              "policy.denoiser.unet_dims=[32,64]", "train.log_every=20", "train.keep_checkpoints=20"]
    # one run at a time: concurrent torch processes on 2 cores slow each other down many times over
    straight = _run_cli([*common, "name=straight"])
    assert straight.wait(timeout=600) == 0, straight.communicate()[0]
    killed = _run_cli([*common, "name=killed"])
    ckpt = tmp_path / "killed/checkpoints/step_000040"
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.05)
    assert ckpt.exists(), killed.communicate()[0]
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert not (tmp_path / "killed/checkpoints/step_000300").exists()
    resumed = _run_cli([*common, "name=killed", "--resume"])
    assert resumed.wait(timeout=600) == 0, resumed.communicate()[0]
    a = load_file(str(tmp_path / "straight/checkpoints/last/training_state/raw_model.safetensors"))
    b = load_file(str(tmp_path / "killed/checkpoints/last/training_state/raw_model.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    ema_a = load_file(str(tmp_path / "straight/checkpoints/last/model.safetensors"))
    ema_b = load_file(str(tmp_path / "killed/checkpoints/last/model.safetensors"))
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    steps = [r["step"] for r in read_metrics(tmp_path / "killed")]
    assert steps == sorted(set(steps)) and steps[-1] == 300  # no duplicated log lines after resuming


def test_ddp_on_two_cpu_processes_keeps_ranks_in_sync(tmp_path):
    args = [f"data.path={LIFT_VIDEO}", f"output_dir={tmp_path}", "name=ddp", "train.steps=30", "train.save_every=15",
            "train.batch_size=8", "train.progress=false", "policy.encoder.cameras=[]", "policy.encoder.dim=32",
            "policy.denoiser.unet_dims=[32,64]", "train.log_every=10", "train.device=cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                             "-m", "robopolicy.cli", "train", *args], capture_output=True, text=True, env=env,
                            cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp/summary.json").read_text())
    assert summary["world_size"] == 2
    checksums = summary["rank_parameter_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1]
    assert result.stdout.count("trained 30 steps") == 1  # only rank 0 reports
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert len([f for f in files if f.endswith("metrics.jsonl")]) == 1
    rows = read_metrics(tmp_path / "ddp")
    assert [r["step"] for r in rows] == [10, 20, 30]  # one writer, no interleaved lines
    assert (tmp_path / "ddp/checkpoints/step_000030/training_state/rng.safetensors").is_file()
    rng = load_file(str(tmp_path / "ddp/checkpoints/step_000030/training_state/rng.safetensors"))
    assert sorted(rng) == ["torch_rank0", "torch_rank1"]


def test_wandb_offline_logging(tmp_path):
    cfg = tiny_config(tmp_path, "flow", extra=["train.steps=20", "train.save_every=20", "wandb.mode=offline"])
    result = train(cfg)
    offline_runs = list((result.run_dir / "wandb").glob("offline-run-*"))
    assert offline_runs, "wandb offline run folder missing"
    assert len(read_metrics(result.run_dir)) == 2


def test_refuses_to_overwrite_and_to_resume_with_another_config(tmp_path):
    cfg = tiny_config(tmp_path, "flow", extra=["train.steps=10", "train.save_every=10"])
    train(cfg)
    with pytest.raises(ConfigError, match="already has checkpoints"):
        train(cfg)
    changed = tiny_config(tmp_path, "flow", extra=["train.steps=10", "train.save_every=10", "train.lr=0.5"])
    with pytest.raises(ConfigError, match="config key 'train.lr' was 0.001, now 0.5"):
        train(changed, resume=True)
    missing = tiny_config(tmp_path, "flow", name="other", extra=["data.path=/nonexistent/dataset"])
    with pytest.raises(Exception, match="dataset folder not found: /nonexistent/dataset"):
        train(missing)
