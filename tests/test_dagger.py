"""Corrective data from the experts: DART noise while recording, and DAgger rounds."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import LIFT_VIDEO
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.policy.execution import make_executor
from robopolicy.policy.policy import Policy
from robopolicy.sim.collect import collect, perturbable_dims, run_expert_episode

LIFT = "robosuite/Lift"


class RecordingEnv:
    """The real env, remembering the actions it executed."""

    def __init__(self, env):
        self.env, self.executed = env, []

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, **kw):
        self.executed = []
        return self.env.reset(**kw)

    def step(self, action):
        self.executed.append(np.asarray(action, dtype=np.float32).copy())
        return self.env.step(action)


@pytest.mark.slow
@pytest.mark.sim
def test_a_noise_injected_demonstration_records_the_clean_expert_action():
    from robopolicy.sim.registry import make_env, make_expert

    env = RecordingEnv(make_env(LIFT))
    episode = run_expert_episode(env, make_expert(LIFT, env.env), seed=3, max_steps=60, noise=0.2)
    recorded = np.stack([f["action"] for f in episode.frames])
    executed = np.stack(env.executed)
    arm = perturbable_dims(env.env)
    assert not arm[-1] and arm[:3].all()  # the gripper is never perturbed
    assert np.abs(executed[:, :3] - recorded[:, :3]).mean() > 0.05  # noise was executed...
    np.testing.assert_array_equal(executed[:, 6], recorded[:, 6])
    np.testing.assert_array_equal(executed[:, 3:6], 0.0)  # ...but not on dims the Lift expert never moves
    # replaying what was executed visits the recorded states, where a fresh expert's action is the label
    expert = make_expert(LIFT, env.env)
    obs, _ = env.env.reset(seed=3)
    expert.reset()
    for frame, action in zip(episode.frames, executed):
        np.testing.assert_allclose(obs["observation.state"], frame["observation.state"], atol=1e-6)
        np.testing.assert_allclose(expert.act(obs), frame["action"], atol=1e-6)
        obs, *_ = env.env.step(action)


def test_noise_injected_collections_are_tagged(tmp_path):
    collect("test/reach", 3, tmp_path / "dart", workers=1, progress=False, noise=0.3)
    collect("test/reach", 2, tmp_path / "plain", workers=1, progress=False)
    assert LeRobotDataset(tmp_path / "dart").episodes.sources == ["dart"] * 3
    assert LeRobotDataset(tmp_path / "plain").episodes.sources == ["demonstration"] * 2


def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "robopolicy.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_envs_without_an_expert_are_refused_in_one_line(tmp_path):
    for args in (["collect", "--env", "test/reach-noexpert", "--episodes", "2", "--out", str(tmp_path / "d")],
                 ["dagger", "--config", str(tmp_path / "c.yaml")]):
        (tmp_path / "c.yaml").write_text(f"data: {{path: {tmp_path / 'd'}}}\neval: {{env: test/reach-noexpert}}\n")
        out = _cli(*args, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and "test/reach-noexpert" in lines[0] and "no scripted expert" in lines[0], lines
        assert not (tmp_path / "d").exists()


@pytest.mark.slow
@pytest.mark.sim
def test_a_dagger_round_on_lift_adds_the_expert_labels_of_the_policys_own_states(tmp_path):
    from robopolicy.dagger import run_dagger
    from robopolicy.sim.registry import make_env, make_expert

    config = tmp_path / "dagger.yaml"
    config.write_text(f"""
name: lift_dagger
output_dir: {tmp_path / 'runs'}
data: {{path: {LIFT_VIDEO}}}
policy:
  head: flow
  encoder: {{cameras: [], state_keys: [observation.state, observation.environment_state], dim: 32}}
  denoiser: {{unet_dims: [32, 64]}}
train: {{steps: 40, batch_size: 32, lr: 0.001, warmup_steps: 5, progress: false}}
eval: {{env: {LIFT}, episodes: 2, workers: 2, max_steps: 30, videos: 0}}
dagger: {{rounds: 1, episodes_per_round: 2, steps_per_round: 10}}
""")
    out = run_dagger(config)
    run = tmp_path / "runs" / "lift_dagger"
    base, aggregated = LeRobotDataset(LIFT_VIDEO), LeRobotDataset(run / "data" / "round_1")
    assert aggregated.num_episodes == base.num_episodes + 2
    assert aggregated.episodes.sources == ["demonstration"] * base.num_episodes + ["correction"] * 2
    np.testing.assert_array_equal(aggregated.columns["action"][:len(base)], base.columns["action"])
    state = json.loads((run / "dagger.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [0, 1] and state["rounds"][1]["seeds"] == [300000, 300001]
    assert out["checkpoint"] == run / "checkpoints" / "last" and out["report"].summary["episodes"] == 2
    # The first labelled episode, reproduced by hand: the round-0 policy drives seed 300000 and
    # the dataset holds its observations with a fresh expert's action in each.
    torch.set_num_threads(1)
    policy = Policy.load(run / "round_0" / "checkpoints" / "last")
    executor = make_executor(policy)
    env = make_env(LIFT)
    expert = make_expert(LIFT, env)
    obs, _ = env.reset(seed=300000)
    executor.reset(300000)
    expert.reset()
    rows = np.arange(aggregated.episodes.from_index[-2], aggregated.episodes.to_index[-2])
    policy_differs = False
    for row in rows:
        np.testing.assert_array_equal(aggregated.columns["observation.state"][row], obs["observation.state"])
        label = expert.act(obs)
        np.testing.assert_allclose(aggregated.columns["action"][row], label, atol=1e-6)
        action = executor.act({**obs, "task": env.task})
        policy_differs |= bool(np.abs(action - label).max() > 1e-3)
        obs, *_ = env.step(action)
    assert policy_differs  # the states are the policy's, not a replay of the expert


# ---------------------------------------------------------------------------- durable collection
def _collect_cmd(out, episodes, *extra):
    return [sys.executable, "-m", "robopolicy.cli", "collect", "--env", "test/reach", "--episodes", str(episodes),
            "--out", str(out), "--workers", "1", "--no-progress", *extra]


def _saved(out):
    journal = out / "meta" / "episodes.journal.jsonl"
    return len(journal.read_text().splitlines()) if journal.is_file() else 0


@pytest.mark.slow
@pytest.mark.parametrize("kill_after", [2, 5])
def test_a_collection_killed_at_any_time_keeps_its_episodes_and_resumes_with_the_same_seeds(tmp_path, kill_after):
    import os
    import signal
    import time

    from robopolicy.errors import DatasetError

    reference = tmp_path / "reference"
    collect("test/reach", 8, reference, workers=1, progress=False)
    out = tmp_path / "killed"
    # a slow env (TOY_STEP_SLEEP) so that the kill lands while episodes are being written
    env = {**os.environ, "TOY_STEP_SLEEP": "0.05"}
    proc = subprocess.Popen(_collect_cmd(out, 8), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _saved(out) < kill_after and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(0.3 * (kill_after % 3))  # land at different points of the next episode
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    saved = _saved(out)
    assert saved >= kill_after
    with pytest.raises(DatasetError, match=f"interrupted write.*{saved} episodes are saved.*--resume"):
        LeRobotDataset(out)
    again = subprocess.run(_collect_cmd(out, 8), capture_output=True, text=True)
    assert again.returncode == 2 and "--resume continues it" in again.stderr
    done = subprocess.run(_collect_cmd(out, 8, "--resume"), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = LeRobotDataset(reference), LeRobotDataset(out)
    assert b.num_episodes == 8 and not (out / "meta" / "episodes.journal.jsonl").exists()
    for key in ("observation.state", "action", "episode_index", "frame_index"):
        np.testing.assert_array_equal(a.columns[key], b.columns[key])  # the same seeds, in the same order


def test_dagger_on_a_plugin_env_resumes_after_its_finished_rounds(tmp_path):
    from robopolicy.dagger import run_dagger

    collect("test/reach", 10, tmp_path / "demos", workers=1, progress=False)
    config = tmp_path / "reach.yaml"
    config.write_text(f"""
name: reach_dagger
output_dir: {tmp_path / 'runs'}
data: {{path: {tmp_path / 'demos'}}}
policy:
  head: act
  n_obs_steps: 1
  action_offset: 0
  encoder: {{cameras: [], state_keys: [observation.state, observation.environment_state], dim: 16}}
  act: {{dim: 32, heads: 2, ff_dim: 64, encoder_layers: 1, vae_encoder_layers: 1}}
train: {{steps: 20, batch_size: 16, warmup_steps: 2, progress: false}}
eval: {{env: test/reach, episodes: 3, workers: 1, videos: 0}}
dagger: {{rounds: 2, episodes_per_round: 2, steps_per_round: 5}}
""")
    first = run_dagger(config)
    run = tmp_path / "runs" / "reach_dagger"
    assert [r["round"] for r in first["rounds"]] == [0, 1, 2]
    assert LeRobotDataset(run / "data" / "round_2").episodes.sources.count("correction") == 4
    # a kill during round 2's training: its summary never got written
    (run / "round_2" / "summary.json").unlink()
    kept = (run / "round_0" / "summary.json").stat().st_mtime_ns, (run / "round_1" / "summary.json").stat().st_mtime_ns
    again = run_dagger(config, resume=True)
    assert [r["round"] for r in again["rounds"]] == [0, 1, 2]
    assert ((run / "round_0" / "summary.json").stat().st_mtime_ns,
            (run / "round_1" / "summary.json").stat().st_mtime_ns) == kept  # finished rounds were not redone
    assert (run / "round_2" / "summary.json").is_file() and (run / "checkpoints" / "last" / "model.safetensors").is_file()


def _dagger_cmd(config, *extra):
    return [sys.executable, "-m", "robopolicy.cli", "dagger", "--config", str(config), *extra]


@pytest.mark.slow
def test_a_dagger_run_killed_mid_rollouts_keeps_its_labelled_episodes_and_resumes_to_the_same_data(tmp_path):
    import os
    import signal
    import time

    collect("test/reach", 10, tmp_path / "demos", workers=1, progress=False)

    def config(name):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"""
name: {name}
output_dir: {tmp_path / 'runs'}
data: {{path: {tmp_path / 'demos'}}}
policy:
  head: flow
  encoder: {{cameras: [], state_keys: [observation.state, observation.environment_state], dim: 16}}
  denoiser: {{unet_dims: [16, 32]}}
train: {{steps: 20, batch_size: 16, warmup_steps: 2, progress: false}}
eval: {{env: test/reach, episodes: 2, workers: 2, videos: 0}}
dagger: {{rounds: 1, episodes_per_round: 8, steps_per_round: 5}}
""")
        return path

    reference = subprocess.run(_dagger_cmd(config("reference")), capture_output=True, text=True)
    assert reference.returncode == 0, reference.stderr
    killed = tmp_path / "runs" / "killed"
    journal = killed / "rollouts" / "round_1" / "labelled" / "meta" / "episodes.journal.jsonl"
    slow = {**os.environ, "TOY_STEP_SLEEP": "0.03"}  # so that the kill lands while rollouts run
    proc = subprocess.Popen(_dagger_cmd(config("killed")), env=slow, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while (not journal.is_file() or len(journal.read_text().splitlines()) < 3) and time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before the kill"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, rollout workers included
    proc.wait()
    saved = len(journal.read_text().splitlines())
    assert 3 <= saved < 8
    resumed = subprocess.run(_dagger_cmd(config("killed"), "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"({saved} saved before the interruption)" in resumed.stdout
    rollouts = json.loads((killed / "rollouts" / "round_1" / "eval.json").read_text())
    assert rollouts["episodes"] == 8 - saved  # only the missing seeds ran again
    a = LeRobotDataset(tmp_path / "runs" / "reference" / "data" / "round_1")
    b = LeRobotDataset(killed / "data" / "round_1")
    assert b.episodes.sources == a.episodes.sources == ["demonstration"] * 10 + ["correction"] * 8
    for key in ("observation.state", "action", "episode_index", "frame_index"):
        np.testing.assert_array_equal(a.columns[key], b.columns[key])  # the same labelled data as a run never killed
    state = json.loads((killed / "dagger.json").read_text())
    assert state["rounds"][1]["seeds"] == [300000, 300007] and state["rounds"][1]["episodes_added"] == 8
