"""Deployment: the loop, its inference strategies, safety, the watchdog, recording, the policy server."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from robopolicy.data.dataset import LeRobotDataset
from robopolicy.deploy.client import PolicyClient, PolicyServerError
from robopolicy.deploy.loop import WatchdogConfig
from robopolicy.deploy.run import check_compatible, deploy, make_robot
from robopolicy.deploy.safety import SafetyConfig, SafetyFilter
from robopolicy.deploy.server import PolicyServer
from robopolicy.deploy.sim_robot import SimFaults, SimRobot
from robopolicy.errors import RobopolicyError, SafetyError
from robopolicy.policy.policy import Policy

TOY = "test/reach"


def toy_robot(faults=None, seed=100_000, **kw):
    return SimRobot(TOY, seed=seed, faults=faults, env_kwargs=kw)


# ---------------------------------------------------------------------------- safety
def test_safety_filter_bounds_rate_and_nan():
    f = SafetyFilter.from_config(SafetyConfig(margin=0.0, max_delta_fraction=0.25),
                                 {"min": [-1.0, 0.0], "max": [1.0, 2.0]}, action_dim=2)
    assert np.allclose(f.low, [-1, 0]) and np.allclose(f.high, [1, 2]) and np.allclose(f.max_delta, [0.5, 0.5])
    out = f(np.array([5.0, -3.0]), previous=None)
    assert out.tolist() == [1.0, 0.0] and f.clipped_bounds == 1
    out = f(np.array([-1.0, 2.0]), previous=np.array([1.0, 0.0]))
    assert np.allclose(out, [0.5, 0.5]) and f.clipped_rate == 1  # moved at most 0.5 per step
    with pytest.raises(SafetyError, match="non-finite"):
        f(np.array([np.nan, 0.0]), previous=None)
    with pytest.raises(SafetyError, match="2 values"):
        SafetyFilter.from_config(SafetyConfig(low=[0.0], high=[1.0]), None, action_dim=2)


# ---------------------------------------------------------------------------- the loop
@pytest.mark.parametrize("strategy", ["sync", "async", "rtc", "ensemble"])
def test_every_strategy_feeds_every_tick(toy_checkpoint, strategy):
    policy = Policy.load(toy_checkpoint)
    # 10 Hz with two ticks of margin: inference (~20 ms here) fits with room for a loaded machine's jitter
    report = deploy(policy, toy_robot(seed=100_001), hz=10, strategy=strategy, max_steps=60, stop_when_done=False,
                    latency_margin_steps=2)
    s = report.summary()
    assert s["stop_reason"] == "max steps reached" and s["steps"] == 60, s
    assert s["missed_actions"] == 0 and s["inference"]["count"] >= 2
    if strategy == "ensemble":
        assert s["inference"]["count"] > 60 // policy.config.n_action_steps  # re-plans more often than receding
    if strategy == "sync":
        assert report.success and s["inference"]["skipped_stale"] == 0


def test_sync_deployment_matches_offline_evaluation_step_for_step(toy_checkpoint, tmp_path):
    """Same checkpoint, seed and execution: the real-time loop reproduces the evaluator's episode."""
    from robopolicy.evaluate.config import EvalConfig
    from robopolicy.evaluate.evaluator import evaluate

    offline = evaluate(toy_checkpoint, TOY, EvalConfig(env=TOY, episodes=3, workers=1, videos=0), tmp_path,
                       progress=False)
    for episode in offline.episodes:
        report = deploy(Policy.load(toy_checkpoint), toy_robot(seed=episode.seed), hz=50, strategy="sync",
                        max_steps=60, seed=episode.seed, safety=SafetyConfig(margin=10.0, max_delta_fraction=100.0))
        assert report.success == episode.success
        assert report.steps == episode.length


def test_async_inference_keeps_every_tick_fed(toy_checkpoint):
    """With 20-step flow sampling (inference spanning several ticks), async still has an action every tick."""
    policy = Policy.load(toy_checkpoint)
    report = deploy(policy, toy_robot(), hz=10, strategy="async", inference_steps=20, max_steps=40,
                    stop_when_done=False, latency_margin_steps=2)
    s = report.summary()
    assert s["steps"] == 40 and s["stop_reason"] == "max steps reached"
    assert s["missed_actions"] == 0, s
    assert s["inference"]["latency_ms_p50"] > 5  # inference really took time, overlapped with control


def test_rtc_chunks_continue_the_committed_actions(toy_checkpoint):
    from robopolicy.deploy.runtime import InferenceRuntime

    policy = Policy.load(toy_checkpoint)
    robot = toy_robot()
    robot.connect()
    runtime = InferenceRuntime(policy, strategy="rtc", hz=20)
    obs = robot.get_observation()
    try:
        runtime.prime(0, obs)
        committed = runtime._queue.planned(0, 3)
        runtime._infer(0, runtime.history.push({k: obs[k] for k in runtime.keys if k in obs}), np.stack(committed))
        new = runtime._queue.planned(0, 3)
    finally:
        runtime.stop()  # gives back the thread cap prime set
    assert np.allclose(np.stack(new), np.stack(committed), atol=1e-5)  # inpainted prefix kept exactly


def test_recording_writes_a_lerobot_dataset_of_what_was_sent(toy_checkpoint, tmp_path):
    policy = Policy.load(toy_checkpoint)
    report = deploy(policy, toy_robot(), hz=50, strategy="async", max_steps=25, record=tmp_path / "rec",
                    stop_when_done=False)
    ds = LeRobotDataset(tmp_path / "rec")
    assert ds.num_episodes == 1 and len(ds) == report.steps == 25
    assert ds.tasks == ["reach the target"]
    assert np.isfinite(ds.columns["action"]).all()
    assert ds.columns["observation.state"].shape == (25, 2)


# ---------------------------------------------------------------------------- watchdog
def test_watchdog_stops_on_stale_observations(toy_checkpoint):
    robot = toy_robot(faults=SimFaults(stale_observation_after=5))
    report = deploy(Policy.load(toy_checkpoint), robot, hz=50, max_steps=100, stop_when_done=False,
                    watchdog=WatchdogConfig(max_observation_age_s=0.1))
    assert "observation is" in report.stop_reason and report.steps < 20
    assert not robot.is_connected  # safe stop disconnects


def test_watchdog_stops_when_the_driver_raises(toy_checkpoint):
    robot = toy_robot(faults=SimFaults(raise_on_step=7))
    report = deploy(Policy.load(toy_checkpoint), robot, hz=50, max_steps=100, stop_when_done=False)
    assert "RobotDriverError" in report.stop_reason and report.steps == 7
    assert not robot.is_connected


def test_watchdog_stops_on_inference_overrun(toy_checkpoint):
    robot = toy_robot()
    report = deploy(Policy.load(toy_checkpoint), robot, hz=20, max_steps=200, stop_when_done=False,
                    strategy="async", inference_steps=3000, watchdog=WatchdogConfig(max_inference_s=0.3))
    assert "inference" in report.stop_reason, report.stop_reason
    assert not robot.is_connected


def test_watchdog_stops_an_inference_overrun_with_the_sync_strategy_too(toy_checkpoint):
    robot = toy_robot()
    start = time.monotonic()
    report = deploy(Policy.load(toy_checkpoint), robot, hz=20, max_steps=200, stop_when_done=False,
                    strategy="sync", inference_steps=2000, watchdog=WatchdogConfig(max_inference_s=0.3))
    assert "watchdog: inference has run" in report.stop_reason, report.stop_reason
    assert report.steps <= 24 and not robot.is_connected  # within the first chunks, not 200 steps later
    assert time.monotonic() - start < 60


def test_a_tick_without_a_planned_action_sends_the_hold_command(toy_checkpoint):
    robot = toy_robot()
    sent = []
    original = robot.send_action
    robot.send_action = lambda a: sent.append(np.array(a)) or original(a)
    # inference far slower than a chunk lasts at 50 Hz: the queue runs dry between chunks
    report = deploy(Policy.load(toy_checkpoint), robot, hz=50, max_steps=60, stop_when_done=False,
                    strategy="async", inference_steps=400,
                    watchdog=WatchdogConfig(max_consecutive_missed=1000, max_inference_s=30))
    assert report.holds > 0 and report.holds == report.missed_actions, report.summary()
    holds = sum(1 for a in sent if np.array_equal(a, np.zeros(1)))
    assert holds == report.holds + 1  # every tick without an action, then the safe stop; nothing repeated
    assert report.summary()["holds"] == report.holds


def test_safety_refuses_nan_actions_and_stops(toy_checkpoint, tmp_path):
    poisoned = tmp_path / "nan"
    Policy.load(toy_checkpoint).save(poisoned)
    weights = load_file(str(poisoned / "model.safetensors"))
    weights = {k: (torch.full_like(v, float("nan")) if "final" in k else v) for k, v in weights.items()}
    save_file(weights, str(poisoned / "model.safetensors"))
    robot = toy_robot()
    sent = []
    original = robot.send_action
    robot.send_action = lambda a: sent.append(np.array(a)) or original(a)
    report = deploy(Policy.load(poisoned), robot, hz=50, max_steps=50, stop_when_done=False)
    assert report.stop_reason.startswith("safety: non-finite action")
    assert len(sent) == 1 and np.array_equal(sent[0], np.zeros(1))  # only the hold command went out
    assert all(np.isfinite(a).all() for a in sent)


def test_incompatible_robot_is_refused_before_moving(toy_checkpoint):
    policy = Policy.load(toy_checkpoint)
    robot = SimRobot("robosuite/Lift")
    with pytest.raises(RobopolicyError, match="observation.state with shape \\[9\\], the policy expects \\[2\\]"):
        robot.connect()
        check_compatible(robot, policy)
    robot.disconnect()


def test_sigterm_shuts_down_cleanly_and_keeps_the_recording(toy_checkpoint, tmp_path):
    cmd = [sys.executable, "-m", "robopolicy.cli", "deploy", "--checkpoint", str(toy_checkpoint),
           "--robot", f"sim:{TOY}", "--hz", "20", "--duration", "120", "--keep-running",
           "--record", str(tmp_path / "rec")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ.copy())
    time.sleep(25)  # start-up (imports, first inference) then some control ticks
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped: signal SIGTERM" in out
    ds = LeRobotDataset(tmp_path / "rec")
    assert len(ds) > 10


def test_kill_9_mid_recording_keeps_every_saved_segment(toy_checkpoint, tmp_path):
    rec = tmp_path / "rec"
    cmd = [sys.executable, "-m", "robopolicy.cli", "deploy", "--checkpoint", str(toy_checkpoint),
           "--robot", f"sim:{TOY}", "--hz", "20", "--duration", "120", "--keep-running",
           "--record", str(rec), "--record-segment-s", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    journal = rec / "meta" / "episodes.journal.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (journal.is_file() and len(journal.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    time.sleep(0.5)  # land the kill part-way through the next segment
    proc.kill()
    proc.wait(timeout=30)
    info = subprocess.run([sys.executable, "-m", "robopolicy.cli", "dataset", "info", str(rec)],
                          capture_output=True, text=True, timeout=120)
    assert info.returncode == 2 and "an interrupted write" in info.stderr and "dataset finalize" in info.stderr
    done = subprocess.run([sys.executable, "-m", "robopolicy.cli", "dataset", "finalize", str(rec)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ds = LeRobotDataset(rec)
    assert ds.num_episodes >= 3 and set(ds.episodes.length.tolist()) == {20}  # whole 1 s segments at 20 Hz
    assert np.isfinite(ds.columns["action"]).all()
    again = subprocess.run([sys.executable, "-m", "robopolicy.cli", "dataset", "finalize", str(rec)],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "not an interrupted write" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_compiled_deploy_on_a_cpu_finishes_the_task(toy_checkpoint):
    """`deploy --compile` on a CPU: the U-Net runs in ONNX Runtime and the loop still solves the task."""
    cmd = [sys.executable, "-m", "robopolicy.cli", "deploy", "--checkpoint", str(toy_checkpoint),
           "--robot", f"sim:{TOY}", "--hz", "20", "--max-steps", "60", "--device", "cpu", "--compile",
           "--strategy", "sync"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=os.environ.copy())
    assert out.returncode == 0, out.stdout + out.stderr
    assert "stopped: episode finished" in out.stdout and "task success: True" in out.stdout


# ---------------------------------------------------------------------------- policy server
@pytest.fixture
def server(toy_checkpoint):
    srv = PolicyServer(Policy.load(toy_checkpoint), token="s3cret", port=0, max_message_bytes=64 * 1024).start()
    yield srv
    srv.shutdown()


def test_remote_policy_matches_local(server, toy_checkpoint):
    client = PolicyClient(f"ws://127.0.0.1:{server.port}", "s3cret")
    local = Policy.load(toy_checkpoint)
    obs = {"observation.state": np.array([0.1, 0.0], np.float32),
           "observation.environment_state": np.array([0.5], np.float32)}
    remote_chunk = client.predict_chunk(obs, generator=torch.Generator().manual_seed(7))
    seed = 7 + 1  # the client derives a per-request seed: initial seed + request id (hello was id 0)
    local_chunk = local.predict_chunk(obs, generator=torch.Generator().manual_seed(seed))
    assert np.allclose(remote_chunk, local_chunk, atol=1e-6)
    assert client.observation_keys == local.observation_keys and client.chunk_start == local.chunk_start
    client.close()


def test_server_refuses_wrong_token_and_oversized_messages(server):
    with pytest.raises(PolicyServerError, match="refused the token"):
        PolicyClient(f"ws://127.0.0.1:{server.port}", "wrong")
    client = PolicyClient(f"ws://127.0.0.1:{server.port}", "s3cret", retries=0)
    huge = {"observation.state": np.zeros(100_000, np.float32), "observation.environment_state": np.zeros(1, np.float32)}
    with pytest.raises(PolicyServerError, match="exceeds the server's message limit"):
        client.predict_chunk(huge)
    bad = {"observation.state": np.zeros(5, np.float32), "observation.environment_state": np.zeros(1, np.float32)}
    client = PolicyClient(f"ws://127.0.0.1:{server.port}", "s3cret")
    with pytest.raises(PolicyServerError, match="observation 'observation.state' has shape"):
        client.predict_chunk(bad)


def _raw(server, token="s3cret"):
    """A websocket speaking the wire format by hand, as a misbehaving client would."""
    from websockets.sync.client import connect

    return connect(f"ws://127.0.0.1:{server.port}", compression=None, open_timeout=5)


TOY_OBS = {"observation.state": np.zeros(2, np.float32), "observation.environment_state": np.zeros(1, np.float32)}


def _ask(ws, header, arrays=None, token="s3cret"):
    from robopolicy.deploy.protocol import decode, encode

    ws.send(encode({"token": token, **header}, arrays))
    return decode(ws.recv(timeout=10))[0]


def _closed_code(ws):
    from websockets.exceptions import ConnectionClosed

    try:
        ws.recv(timeout=10)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    return "open"


def test_server_caps_the_steps_a_request_may_ask_for(server):
    with _raw(server) as ws:
        reply = _ask(ws, {"type": "predict", "id": 1, "steps": 10_000}, TOY_OBS)
        assert reply["type"] == "error" and "server's limit" in reply["message"]
        assert _ask(ws, {"type": "predict", "id": 2, "steps": 10}, TOY_OBS)["type"] == "result"
        assert _ask(ws, {"type": "hello"})["max_steps"] == 10  # the policy's own setting


def test_unauthenticated_clients_get_only_the_door(toy_checkpoint):
    srv = PolicyServer(Policy.load(toy_checkpoint), token="s3cret", port=0, auth_timeout_s=1.0,
                       max_connections_per_address=3).start()
    try:
        with _raw(srv) as idle:  # says nothing: closed after the deadline
            assert _closed_code(idle) == 4001
        with _raw(srv) as garbage:  # a malformed first frame: closed, no error dialogue
            garbage.send(b"\x00\x01")
            assert _closed_code(garbage) == 4001
        with _raw(srv) as wrong:
            from robopolicy.deploy.protocol import encode

            wrong.send(encode({"type": "hello", "token": "nope"}))
            assert _closed_code(wrong) == 4001
        # connections per address are capped while they are open
        held = [_raw(srv) for _ in range(3)]
        for ws in held:
            assert _ask(ws, {"type": "hello"})["type"] == "hello"
        with _raw(srv) as extra:
            assert _closed_code(extra) == 1013
        for ws in held:
            ws.close()
        time.sleep(0.5)
        with _raw(srv) as again:
            assert _ask(again, {"type": "hello"})["type"] == "hello"
    finally:
        srv.shutdown()


@pytest.mark.parametrize("arrays_meta, message", [
    ([{"key": 5, "dtype": "float32", "shape": [2], "offset": 0, "nbytes": 8}], "not a string"),
    ([{"key": "observation.state", "dtype": "float32", "shape": [-2], "offset": 0, "nbytes": 8}], "non-negative"),
    ([{"key": "observation.state", "dtype": "float32", "shape": [2 ** 62, 2 ** 62], "offset": 0, "nbytes": 8}],
     "size does not match"),
    ("not a list", "must be a list"),
    ([{"key": "observation.state", "dtype": "object", "shape": [1], "offset": 0, "nbytes": 8}], "not allowed"),
])
def test_malformed_frames_get_an_error_reply_and_the_server_keeps_serving(server, arrays_meta, message):
    import json
    import struct

    with _raw(server) as ws:
        assert _ask(ws, {"type": "hello"})["type"] == "hello"
        head = json.dumps({"type": "predict", "token": "s3cret", "id": 3, "arrays": arrays_meta}).encode()
        ws.send(struct.pack("<I", len(head)) + head + bytes(8))
        from robopolicy.deploy.protocol import decode

        reply = decode(ws.recv(timeout=10))[0]
        assert reply["type"] == "error" and message in reply["message"], reply
        assert _ask(ws, {"type": "predict", "id": 4}, TOY_OBS)["type"] == "result"


def test_deeply_nested_json_and_missing_or_nan_observations_are_refused(server):
    import struct

    with _raw(server) as ws:
        assert _ask(ws, {"type": "hello"})["type"] == "hello"
        head = b'{"token": "s3cret", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        ws.send(struct.pack("<I", len(head)) + head)
        from robopolicy.deploy.protocol import decode

        assert "nested too deeply" in decode(ws.recv(timeout=10))[0]["message"]
        missing = _ask(ws, {"type": "predict", "id": 5}, {"observation.state": np.zeros(2, np.float32)})
        assert missing["type"] == "error" and "observation.environment_state" in missing["message"]
        nan = _ask(ws, {"type": "predict", "id": 6}, {**TOY_OBS, "observation.state": np.array([np.nan, 0], np.float32)})
        assert nan["type"] == "error" and "NaN" in nan["message"]
        assert _ask(ws, {"type": "predict", "id": 7}, TOY_OBS)["type"] == "result"


def test_client_reconnects_after_a_server_restart_and_times_out_when_gone(toy_checkpoint):
    policy = Policy.load(toy_checkpoint)
    srv = PolicyServer(policy, token="t", port=0).start()
    port = srv.port
    client = PolicyClient(f"ws://127.0.0.1:{port}", "t", timeout_s=1.0, retries=4, backoff_s=0.2)
    obs = {"observation.state": np.zeros(2, np.float32), "observation.environment_state": np.zeros(1, np.float32)}
    client.predict_chunk(obs)
    srv.shutdown()
    srv = PolicyServer(policy, token="t", port=port).start()
    assert client.predict_chunk(obs).shape == (15, 1)
    assert client.reconnects >= 1
    srv.shutdown()
    client.retries = 1
    with pytest.raises(PolicyServerError, match="unreachable after 2 attempts"):
        client.predict_chunk(obs)


def test_deploy_through_the_policy_server(server):
    client = PolicyClient(f"ws://127.0.0.1:{server.port}", "s3cret")
    report = deploy(client, toy_robot(), hz=20, strategy="sync", max_steps=60)
    assert report.stop_reason == "episode finished" and report.success
    assert report.inference["count"] >= 2 and server.requests >= report.inference["count"]


# ---------------------------------------------------------------------------- LeRobot adapter
class FakeSO101:
    """A test double with the exact interface of LeRobot's Robot (lerobot is not installable here)."""

    name = "so101_follower"
    motors = ["shoulder_pan.pos", "shoulder_lift.pos", "elbow_flex.pos", "wrist_flex.pos", "wrist_roll.pos",
              "gripper.pos"]

    def __init__(self):
        self.connected = False
        self.position = np.linspace(-10, 10, 6)
        self.sent = []

    @property
    def observation_features(self):
        return {**{m: float for m in self.motors}, "front": (48, 64, 3)}

    @property
    def action_features(self):
        return {m: float for m in self.motors}

    @property
    def is_connected(self):
        return self.connected

    def connect(self, calibrate=True):
        self.connected = True

    def get_observation(self):
        return {**dict(zip(self.motors, self.position.tolist())), "front": np.full((48, 64, 3), 7, np.uint8)}

    def send_action(self, action):
        self.sent.append(action)
        clipped = {k: float(np.clip(v, -100, 100)) for k, v in action.items()}  # like max_relative_target
        self.position = np.array([clipped[m] for m in self.motors])
        return clipped

    def disconnect(self):
        self.connected = False


def test_lerobot_adapter_maps_features_actions_and_holds_position():
    from robopolicy.deploy.lerobot_robot import LeRobotRobot

    fake = FakeSO101()
    robot = LeRobotRobot(fake, task="pick up the cube")
    assert robot.observation_features["observation.state"]["names"] == FakeSO101.motors
    assert robot.observation_features["observation.images.front"]["shape"] == [48, 64, 3]
    assert robot.action_features["action"]["shape"] == [6]
    robot.connect()
    obs = robot.get_observation()
    assert np.allclose(obs["observation.state"], np.linspace(-10, 10, 6))
    assert obs["observation.images.front"].shape == (48, 64, 3) and obs["task"] == "pick up the cube"
    assert np.allclose(robot.hold_action(), np.linspace(-10, 10, 6))  # hold = stay where it is
    sent = robot.send_action(np.array([1, 2, 3, 4, 5, 500.0]))
    assert fake.sent[-1] == {m: float(v) for m, v in zip(FakeSO101.motors, [1, 2, 3, 4, 5, 500.0])}
    assert sent.tolist() == [1, 2, 3, 4, 5, 100]  # what the driver really sent comes back
    with pytest.raises(RobopolicyError, match="6 motors"):
        robot.send_action(np.zeros(3))
    robot.disconnect()
    assert not fake.connected


def test_lerobot_extra_missing_gives_a_clear_error():
    from robopolicy.deploy.lerobot_robot import LeRobotRobot

    with pytest.raises(RobopolicyError, match=r"pip install 'robopolicy\[lerobot\]'"):
        LeRobotRobot.from_type("so101_follower", port="/dev/null")
