"""Demonstration quality scores (`robopolicy dataset quality`) and the degraded takes
(`robopolicy collect --degrade`) they are checked against."""

import json
import subprocess
import sys

import numpy as np
import pytest

from robopolicy.data import quality
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.errors import ConfigError
from robopolicy.sim.collect import collect
from robopolicy.sim.degrade import KINDS, Degrader, degradation_for
from toy_env import ReachEnv, ReachExpert

TOY = "test/reach"


@pytest.fixture(scope="module")
def degraded_toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality") / "demos"
    collect(TOY, 30, root, workers=1, progress=False, degrade=0.33)
    return root


def test_degraded_takes_are_tagged_and_record_what_was_executed(degraded_toy):
    ds = LeRobotDataset(degraded_toy)
    sources = ds.episodes.sources
    degraded = [s for s in sources if s.startswith("degraded-")]
    assert 4 <= len(degraded) <= 16 and "demonstration" in sources
    assert {s.removeprefix("degraded-") for s in degraded} <= set(KINDS)
    expert = ReachExpert(ReachEnv())
    for e, source in enumerate(sources):  # every attempt succeeded, so episode e is seed e
        rows = np.arange(ds.episodes.from_index[e], ds.episodes.to_index[e])
        clean = np.array([expert.act({"observation.state": ds.columns["observation.state"][r],
                                      "observation.environment_state": ds.columns["observation.environment_state"][r]})
                          for r in rows])[:, 0]
        recorded = ds.columns["action"][rows, 0]
        if source == "demonstration":
            np.testing.assert_allclose(recorded, clean, atol=1e-6)
            continue
        kind = source.removeprefix("degraded-")
        degrader = Degrader(kind, e, np.array([True]), horizon=ReachEnv().max_steps // 3)
        paused = np.array([any(a <= t < b for a, b in degrader.windows) for t in range(len(rows))])
        if kind == "hesitant":  # the take's pauses are in the data, not only in the motion
            assert paused.any() and np.all(recorded[paused] == 0)
            np.testing.assert_allclose(recorded[~paused], clean[~paused], atol=1e-6)
        else:  # shaky or detouring: the bad actions are what the dataset holds
            assert np.abs(recorded - clean).max() > 0.1
    # which takes are degraded is a function of the seed, so a collection can be repeated
    assert [degradation_for(s, 0.33) for s in range(30)] == [degradation_for(s, 0.33) for s in range(30)]
    assert degradation_for(7, 0.0) is None


@pytest.mark.slow
def test_quality_command_ranks_the_degraded_takes_first(degraded_toy, tmp_path):
    out = tmp_path / "q"
    run = subprocess.run([sys.executable, "-m", "robopolicy.cli", "dataset", "quality", str(degraded_toy),
                          "--steps", "200", "--keep", "best:0.67", "--out", str(out), "--no-progress",
                          "--set", "train.num_threads=1"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "suspicion" in run.stdout and "robopolicy dataset filter" in run.stdout
    report = json.loads((out / "quality.json").read_text())
    assert len(report["episodes"]) == 30
    for row in report["episodes"]:
        for name in (*quality.POLICY_SCORES, *quality.PLAIN_SCORES):
            assert np.isfinite(row[name]) and np.isfinite(row[f"z_{name}"])
    keep = json.loads((out / "keep.json").read_text())["episodes"]
    assert len(keep) == 20 and keep == report["keep"]
    assert (out / "quality.png").stat().st_size > 10_000
    # the scorer never read the tags; they tell us afterwards whether it found the bad takes
    sources = LeRobotDataset(degraded_toy).episodes.sources
    bad = {e for e, s in enumerate(sources) if s.startswith("degraded-")}
    flagged = set(range(30)) - set(keep)
    suspicion = {row["episode"]: row["suspicion"] for row in report["episodes"]}
    assert np.mean([suspicion[e] for e in bad]) > np.mean([suspicion[e] for e in range(30) if e not in bad])
    assert len(flagged & bad) / len(bad) >= 0.6  # recall of the left-out third


def _report(suspicion, jerk):
    raw = {"jerk": np.asarray(jerk, dtype=float)}
    return quality.QualityReport(raw=raw, z={"jerk": quality.robust_z(raw["jerk"])},
                                 suspicion=np.asarray(suspicion, dtype=float), reference="test")


def test_keep_rules():
    report = _report([0.1, 2.5, -0.3, 1.2], [1.0, 9.0, 1.0, 2.0])
    assert quality.keep_episodes(report, "best:0.5") == [0, 2]
    assert quality.keep_episodes(report, "suspicion<1.0") == [0, 2]
    assert quality.keep_episodes(report, "suspicion >= 1.2") == [1, 3]
    assert quality.keep_episodes(report, "jerk<=2") == [0, 2, 3]
    assert quality.keep_episodes(report, "z_jerk<3") == [0, 2, 3]
    assert quality.episode_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    for bad in ("everything", "best:0", "best:1.5", "speed<3", "suspicion=1"):
        with pytest.raises(ConfigError, match="--keep"):
            quality.check_rule(bad)


def test_robust_z_ignores_one_wild_value():
    z = quality.robust_z([1.0, 1.1, 0.9, 1.0, 50.0])
    assert abs(z[0]) < 1 and z[-1] > 100
    assert np.all(quality.robust_z([3.0, 3.0, 3.0]) == 0)


@pytest.mark.parametrize("args, message", [
    (["--keep", "most"], "--keep 'most'"),
    (["--folds", "1"], "--folds"),
    (["--policy", "nowhere/checkpoints/last", "--steps", "10"], "with --policy there are none"),
])
def test_quality_bad_input_is_one_line_exit_2(degraded_toy, tmp_path, args, message):
    out = tmp_path / "q"
    run = subprocess.run([sys.executable, "-m", "robopolicy.cli", "dataset", "quality", str(degraded_toy),
                          "--out", str(out), "--no-progress", *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert message in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert not out.exists()
