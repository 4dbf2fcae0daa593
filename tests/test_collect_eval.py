"""Collecting demonstrations and evaluating checkpoints: reproducible, parallel, robust to crashes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from robopolicy.config import load_config
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.evaluate.config import EvalConfig
from robopolicy.evaluate.evaluator import evaluate, wilson_interval
from robopolicy.sim.collect import collect
from robopolicy.train.trainer import train

TOY = "test/reach"  # tests/plugins/toy_env.py; toy_checkpoint comes from conftest.py


def test_collect_is_the_same_whatever_the_number_of_workers(tmp_path):
    one = collect(TOY, 6, tmp_path / "one", workers=1, progress=False)
    two = collect(TOY, 6, tmp_path / "two", workers=2, seed=0, progress=False)
    assert one.kept == two.kept == 6
    a, b = LeRobotDataset(tmp_path / "one"), LeRobotDataset(tmp_path / "two")
    assert np.array_equal(a.columns["action"], b.columns["action"])
    assert a.tasks == ["reach the target"] and a.features["action"]["names"] == ["force"]
    # frame t holds the observation before action t, and the episode ends 10 steps after success
    assert np.array_equal(a.columns["observation.state"][0], np.zeros(2, np.float32))


def test_wilson_interval():
    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and 0.92 < lo < 0.94
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and 0.27 < hi < 0.28
    lo, hi = wilson_interval(25, 50)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-9


def test_eval_report_and_reproducibility(toy_checkpoint, tmp_path):
    cfg = EvalConfig(env=TOY, episodes=8, workers=2, videos=4)
    first = evaluate(toy_checkpoint, TOY, cfg, tmp_path / "a", progress=False)
    s = first.summary
    assert s["schema_version"] == 1 and s["env"] == TOY and s["episodes"] == 8
    assert s["seeds"] == list(range(100_000, 100_008))
    assert s["checkpoint"]["weights"] == "ema" and len(s["checkpoint"]["sha256"]) == 64
    assert s["policy"]["inference_steps"] == 10 and s["policy"]["n_action_steps"] == 8
    assert s["policy"]["execution"] == "receding"
    assert "torch" in s["versions"] and s["timing"]["workers"] == 2
    assert s["successes"] >= 6, s  # the toy task is easy: a trained policy solves it
    assert s["per_task"] == {"reach the target": {"episodes": 8, "successes": s["successes"],
                                                  "success_rate": s["success_rate"], "ci95": s["ci95"]}}
    lo, hi = s["ci95"]
    assert lo <= s["success_rate"] <= hi
    lines = (tmp_path / "a/episodes.jsonl").read_text().splitlines()
    assert [json.loads(x)["seed"] for x in lines] == s["seeds"]
    assert (tmp_path / "a/summary.png").stat().st_size > 1000
    assert s["videos"] and all(p.endswith(".mp4") for p in s["videos"]) and len(s["videos"]) <= 4
    # the same command again, with a different number of workers: the same episodes, step for step
    again = evaluate(toy_checkpoint, TOY, EvalConfig(env=TOY, episodes=8, workers=1, videos=0), tmp_path / "b",
                     progress=False)
    assert [(e.success, e.length) for e in again.episodes] == [(e.success, e.length) for e in first.episodes]


def test_batched_evaluation_runs_the_same_episodes_with_one_policy_call_per_decision(toy_checkpoint, tmp_path):
    plain = evaluate(toy_checkpoint, TOY, EvalConfig(env=TOY, episodes=12, workers=2, videos=0), tmp_path / "plain",
                     progress=False)
    cfg = EvalConfig(env=TOY, episodes=12, workers=2, envs=4, videos=4)
    batched = evaluate(toy_checkpoint, TOY, cfg, tmp_path / "batched", progress=False)
    s = batched.summary
    assert s["seeds"] == plain.summary["seeds"] and s["timing"]["batched_envs"] == 4 and s["videos"] == []
    assert s["successes"] >= 10, s  # the same policy solves the easy toy task batched too
    for e in batched.episodes:
        assert e.inferences == -(-e.length // 8)  # one chunk of 8 actions per decision, as unbatched
        assert e.first_success_step == (e.length if e.success else None)
    # each episode samples its own seed's noise, as unbatched: the same episodes, whatever the batching
    episodes = [(e.seed, e.success, e.length) for e in plain.episodes]
    assert [(e.seed, e.success, e.length) for e in batched.episodes] == episodes
    assert (tmp_path / "batched" / "report.html").is_file()
    other = evaluate(toy_checkpoint, TOY, EvalConfig(env=TOY, episodes=12, workers=1, envs=5, videos=0),
                     tmp_path / "other", progress=False)
    assert [(e.seed, e.success, e.length) for e in other.episodes] == episodes


def test_eval_settings_that_change_the_score_are_recorded(toy_checkpoint, tmp_path):
    cfg = EvalConfig(env=TOY, episodes=2, workers=1, videos=0, inference_steps=2, execution="ensemble", weights="raw")
    s = evaluate(toy_checkpoint, TOY, cfg, tmp_path, progress=False).summary
    assert s["policy"]["inference_steps"] == 2 and s["policy"]["execution"] == "ensemble"
    assert s["policy"]["n_action_steps"] == 1 and s["checkpoint"]["weights"] == "raw"


@pytest.mark.parametrize("fault", ["TOY_CRASH_SEEDS", "TOY_EXIT_SEEDS", "TOY_HANG_SEEDS"])
def test_a_broken_episode_is_retried_then_counted_failed_never_hangs(toy_checkpoint, tmp_path, monkeypatch, fault):
    monkeypatch.setenv(fault, "100001")
    cfg = EvalConfig(env=TOY, episodes=4, workers=2, videos=0)
    result = evaluate(toy_checkpoint, TOY, cfg, tmp_path, progress=False, episode_timeout_s=20)
    broken = [e for e in result.episodes if e.seed == 100001][0]
    assert not broken.success and broken.error and broken.attempts == 2
    assert result.summary["failed_runs"] == [{"seed": 100001, "error": broken.error}]
    assert all(e.error is None for e in result.episodes if e.seed != 100001)
    assert len(result.episodes) == 4


def test_cli_errors_are_one_line(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "robopolicy.cli", *args], capture_output=True, text=True)

    r = run("collect", "--env", "robosuite/Lfit", "--episodes", "1", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "unknown env 'robosuite/Lfit' (did you mean 'robosuite/Lift'?)" in r.stderr
    r = run("eval", "--checkpoint", str(tmp_path / "none"), "--env", TOY)
    assert r.returncode == 2 and r.stderr.strip() == f"error: checkpoint folder not found: {tmp_path / 'none'}"


@pytest.mark.slow
def test_robosuite_collect_with_cameras_then_train_and_evaluate(tmp_path):
    """The real thing, end to end at a tiny scale: robosuite Lift images -> dataset -> policy -> eval."""
    result = collect("robosuite/Lift", 3, tmp_path / "lift", images=True, image_size=64, workers=2, progress=False)
    ds = LeRobotDataset(tmp_path / "lift")
    assert ds.num_episodes == 3 and ds.camera_keys == ["observation.images.agentview", "observation.images.wrist"]
    assert ds.features["observation.images.agentview"]["info"]["video.codec"] == "av1"
    assert result.successes == result.attempted == 3
    frames = ds.frames("observation.images.agentview", np.arange(len(ds)))
    assert frames.shape == (len(ds), 64, 64, 3) and frames.std() > 10
    cfg = load_config(None, [f"data.path={tmp_path / 'lift'}", f"output_dir={tmp_path}", "name=lift",
                             "policy.encoder.vision.backbone=small_cnn", "policy.encoder.dim=32",
                             "policy.denoiser.unet_dims=[32,64]", "train.steps=20", "train.batch_size=8",
                             "train.save_every=20", "train.progress=false"])
    ckpt = train(cfg).checkpoint
    report = evaluate(ckpt, "robosuite/Lift", EvalConfig(env="robosuite/Lift", episodes=2, workers=2, videos=2,
                                                          max_steps=30), tmp_path / "eval", progress=False)
    s = report.summary
    assert s["episodes"] == 2 and all(e.length == 30 or e.success for e in report.episodes)
    assert len(s["videos"]) >= 1


@pytest.mark.slow
def test_evaluation_workers_exit_when_the_evaluation_is_killed(toy_checkpoint, tmp_path):
    """kill -9 of `robopolicy eval` must not leave its workers running (and holding cores) forever."""
    import os
    import signal
    import time
    from pathlib import Path

    def children(pid):
        path = Path(f"/proc/{pid}/task/{pid}/children")
        return [int(c) for c in path.read_text().split()] if path.is_file() else []

    def running(pid):
        try:
            return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
        except FileNotFoundError:
            return False

    env = {**os.environ, "TOY_STEP_SLEEP": "0.05"}  # episodes of a few seconds: the kill lands mid-evaluation
    proc = subprocess.Popen([sys.executable, "-m", "robopolicy.cli", "eval", "--checkpoint", str(toy_checkpoint),
                             "--env", "test/reach", "--episodes", "20", "--workers", "2", "--out", str(tmp_path / "eval")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(children(proc.pid)) < 3 and time.monotonic() < deadline:  # 2 workers + the resource tracker
        time.sleep(0.1)
    workers = children(proc.pid)
    assert len(workers) >= 2
    time.sleep(2.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 15
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [w for w in workers if running(w)]
    assert not alive, f"workers still running after the evaluation was killed: {alive}"


@pytest.mark.slow
def test_run_collects_camera_demonstrations_then_trains_in_one_process(tmp_path):
    """`robopolicy run` renders camera demonstrations and then loads the trainer in the same process;
    it used to die there with a segfault (Mesa's LLVM loaded before triton's: robopolicy/sim/headless.py)."""
    r = subprocess.run([sys.executable, "-m", "robopolicy.cli", "run", "--config", "configs/tabletop_pick_nolanguage_flow.yaml",
                        "name=cams", f"output_dir={tmp_path}", f"data.path={tmp_path / 'data'}", "collect.episodes=2",
                        "collect.workers=1", "policy.denoiser.unet_dims=[16,32]", "train.steps=2", "train.batch_size=4",
                        "train.save_every=2", "eval.episodes=1", "eval.workers=1", "eval.videos=0", "eval.max_steps=5"],
                       capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "cams" / "checkpoints" / "last").is_dir()
    assert json.loads((tmp_path / "cams" / "eval" / "final" / "eval.json").read_text())["episodes"] == 1
