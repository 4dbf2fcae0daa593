"""Every user error is one line on stderr naming the file or flag, exit status 2, nothing written.

Each case runs the real `robopolicy` command in a fresh working folder and checks what a user
relies on: the exit status, that stderr is exactly one line and names what is wrong, and that the
folder holds nothing new afterwards (no half-made run folder, dataset or report).
"""

import json
import shutil
import subprocess
import sys

import pytest

from conftest import LIFT_VIDEO, REPO


def run_cli(cwd, *args):
    return subprocess.run([sys.executable, "-m", "robopolicy.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


def assert_one_line_error(result, *words):
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], (word, lines[0])


def files_in(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


BASE = {"data": {"path": str(LIFT_VIDEO)},
        "policy": {"head": "flow", "encoder": {"cameras": [], "dim": 16}, "denoiser": {"unet_dims": [16, 32]}},
        "train": {"steps": 2, "batch_size": 4, "progress": False}}


def _with(path, value):
    cfg = json.loads(json.dumps(BASE))
    node = cfg
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return cfg


@pytest.mark.parametrize("config, words", [
    (_with("train.save_every", 0), ["train.save_every", ">= 1"]),
    (_with("train.log_every", 0), ["train.log_every"]),
    (_with("policy.denoiser.unet_dims", []), ["unet_dims"]),
    (_with("policy.flow.num_inference_steps", 0), ["flow.num_inference_steps"]),
    (_with("policy.diffusion.num_inference_steps", 0), ["diffusion.num_inference_steps"]),
    (_with("policy.quaternions", {"observation.state": [7]}), ["quaternions", "does not fit"]),
    (_with("data.path", "no/such/dataset"), ["no/such/dataset"]),
    ({}, ["data.path is empty"]),
    (_with("train.stepz", 5), ["train.stepz", "train.steps"]),
    (_with("train.steps", "many"), ["train.steps", "integer"]),
    (_with("train.steps", 0), ["train.steps"]),
    (_with("train.lr", -1), ["train.lr"]),
    (_with("train.batch_size", 2.5), ["train.batch_size"]),
    (_with("train.precision", "fp8"), ["train.precision", "fp8"]),
    (_with("policy.head", "gpt"), ["policy.head", "gpt"]),
    (_with("policy.horizon", 0), ["horizon"]),
    (_with("policy.n_action_steps", 99), ["n_action_steps"]),
    (_with("policy.action_offset", 3), ["action_offset"]),
    (_with("policy.encoder.dim", 2), ["encoder.dim"]),
    (_with("policy.encoder.state_keys", ["observation.nothing"]), ["observation.nothing"]),
    (_with("policy.encoder.auxiliary_state_keys", ["observation.nothing"]), ["observation.nothing"]),
    (_with("policy.encoder.vision.crop_ratio", 2), ["crop_ratio"]),
    (_with("policy.encoder.vision.language_film", True), ["language_film", "encoder.language"]),
    (_with("policy.encoder.state_language_film", True), ["state_language_film", "encoder.language"]),
    (_with("policy.encoder.vision.keypoint_language_film", True), ["keypoint_language_film", "vision.language_film"]),
    (_with("dagger.beta", 2), ["dagger.beta"]),
    (_with("train", "fast"), ["train", "mapping"]),
])
def test_bad_configs_are_refused_before_anything_is_written(tmp_path, config, words):
    (tmp_path / "c.yaml").write_text(json.dumps(config))
    before = files_in(tmp_path)
    assert_one_line_error(run_cli(tmp_path, "train", "--config", "c.yaml"), *words)
    assert files_in(tmp_path) == before


def test_an_output_dir_that_is_a_file_and_a_non_utf8_config(tmp_path):
    (tmp_path / "runs").write_text("a file")
    (tmp_path / "c.yaml").write_text(json.dumps(_with("output_dir", "runs")))
    assert_one_line_error(run_cli(tmp_path, "train", "--config", "c.yaml"), "output_dir", "is a file")
    (tmp_path / "latin.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    assert_one_line_error(run_cli(tmp_path, "train", "--config", "latin.yaml"), "latin.yaml", "UTF-8")


@pytest.mark.parametrize("args, words", [
    (["eval", "--checkpoint", "ckpt", "--env", "test/reach", "--workers", "0"], ["--workers"]),
    (["eval", "--checkpoint", "ckpt", "--env", "test/reach", "--episodes", "0"], ["--episodes"]),
    (["eval", "--checkpoint", "ckpt", "--env", "test/reach", "--inference-steps", "0"], ["--inference-steps"]),
    (["eval", "--checkpoint", "ckpt", "--env", "test/reach", "--n-action-steps", "0"], ["--n-action-steps"]),
    (["eval", "--checkpoint", "ckpt", "--env", "test/reach", "--max-steps", "0"], ["--max-steps"]),
    (["eval", "--checkpoint", "ckpt", "--env", "test/reach", "--envs", "-1"], ["--envs"]),
    (["eval", "--checkpoint", "ckpt", "--env", "test/reach", "--envs", "2", "--execution", "ensemble"],
     ["--envs", "ensemble"]),
    (["collect", "--env", "test/reach", "--out", "d", "--workers", "0"], ["--workers"]),
    (["collect", "--env", "test/reach", "--out", "d", "--noise", "2"], ["--noise"]),
    (["deploy", "--checkpoint", "ckpt", "--robot", "sim:test/reach", "--hz", "0"], ["--hz"]),
    (["deploy", "--checkpoint", "ckpt", "--robot", "sim:test/reach", "--hz", "-5"], ["--hz"]),
    (["deploy", "--server", "http://host:1", "--robot", "sim:test/reach"], ["--server", "ws://"]),
    (["deploy", "--checkpoint", "ckpt", "--robot", "sim:test/reach", "--max-steps", "0"], ["--max-steps"]),
    (["deploy", "--checkpoint", "ckpt", "--robot", "sim:test/reach", "--record", "r", "--record-segment-s", "-1"],
     ["--record-segment-s"]),
    (["collect", "--env", "test/reach", "--out", "d", "--degrade", "1.5"], ["--degrade"]),
    (["dataset", "finalize", "no/such/folder"], ["no/such/folder", "not an interrupted write"]),
    (["dataset", "view", "no/such/folder", "--episode", "0"], ["no/such/folder"]),
    (["dataset", "quality", "no/such/folder"], ["no/such/folder"]),
    (["dagger", "--config", "missing.yaml"], ["missing.yaml"]),
    (["train", "--config", "missing.yaml"], ["missing.yaml"]),
    (["eval", "--checkpoint", "no/ckpt", "--env", "test/reach"], ["no/ckpt"]),
    (["eval", "--checkpoint", "ckpt", "--env", "robosuite/Lfit"], ["robosuite/Lfit", "robosuite/Lift"]),
    (["collect", "--env", "nope/env", "--out", "d"], ["nope/env"]),
    (["dataset", "info", "no/such/folder"], ["no/such/folder"]),
    (["dataset", "verify", "no/such/folder"], ["no/such/folder"]),
    (["deploy", "--robot", "sim:test/reach"], ["--checkpoint", "--server"]),
    (["deploy", "--checkpoint", "no/ckpt", "--robot", "sim:test/reach"], ["no/ckpt"]),
    (["serve", "--checkpoint", "no/ckpt"], ["no/ckpt"]),
    (["finetune", "--checkpoint", "no/ckpt", "--env", "test/reach"], ["no/ckpt"]),
    (["finetune", "--env", "test/reach"], ["--checkpoint"]),
    (["finetune", "--checkpoint", "ckpt", "--env", "test/reach", "iterations=0"], ["iterations"]),
    (["finetune", "--checkpoint", "ckpt", "--env", "test/reach", "ppo.clip=0"], ["ppo.clip"]),
    (["finetune", "--checkpoint", "ckpt", "--env", "test/reach", "std_min=0.5"], ["std_min"]),
    (["finetune", "--checkpoint", "ckpt", "--env", "test/reach", "timestep_spacing=sideways"], ["timestep_spacing"]),
    (["finetune", "--config", "missing.yaml"], ["missing.yaml"]),
    (["finetune", "--resume", "--checkpoint", "ckpt", "--env", "test/reach"], ["nothing to resume"]),
    (["train", "--config", str(REPO / "configs" / "quickstart_lift_lowdim.yaml"), "train.steps"],
     ["train.steps", "key.sub=value"]),
])
def test_bad_numbers_and_urls_on_the_command_line(tmp_path, args, words):
    before = files_in(tmp_path)
    assert_one_line_error(run_cli(tmp_path, *args), *words)
    assert files_in(tmp_path) == before


def _edit_info(ds, **changes):
    path = ds / "meta/info.json"
    info = json.loads(path.read_text())
    info.update(changes)
    path.write_text(json.dumps(info))


@pytest.mark.parametrize("damage, words", [
    (lambda ds: (ds / "meta/info.json").write_text("[1, 2]"), ["info.json", "JSON object"]),
    (lambda ds: _edit_info(ds, fps=0), ["info.json", "fps"]),
    (lambda ds: _edit_info(ds, fps=-20), ["info.json", "fps"]),
    (lambda ds: _edit_info(ds, fps="twenty"), ["info.json", "fps"]),
    (lambda ds: _edit_info(ds, features={k: v for k, v in json.loads((ds / "meta/info.json").read_text())[
        "features"].items() if k != "observation.environment_state"}), ["observation.environment_state",
                                                                         "not declared"]),
    (lambda ds: (ds / "meta/stats.json").write_text("{not json"), ["stats.json", "JSON"]),
    (lambda ds: (ds / "meta/stats.json").write_text("[]"), ["stats.json", "JSON object"]),
    (lambda ds: (ds / "meta/stats.json").write_text(json.dumps({"action": {"min": [0.0]}})), ["stats.json", "action"]),
])
@pytest.mark.parametrize("verb", ["info", "verify", "train"])
def test_damaged_datasets_are_one_line_from_every_verb(tmp_path, lift_copy, damage, words, verb):
    ds = lift_copy
    damage(ds)
    if verb == "train":
        (tmp_path / "c.yaml").write_text(json.dumps(_with("data.path", str(ds))))
        result = run_cli(tmp_path, "train", "--config", "c.yaml")
        assert not (tmp_path / "runs").exists()
    else:
        result = run_cli(tmp_path, "dataset", verb, str(ds))
    if verb == "verify":  # verify's job is the list: one "problem:" line each, exit 1
        assert result.returncode == 1, result.stderr
        problems = [line for line in result.stderr.splitlines() if line.startswith("problem: ")]
        assert problems and any(all(w in line for w in words) for line in problems), result.stderr
        return
    assert_one_line_error(result, *words)


@pytest.mark.parametrize("file, content, words", [
    ("config.json", "{broken", ["config.json", "not valid JSON"]),
    ("config.json", "[]", ["config.json", "JSON object"]),
    ("stats.json", "{broken", ["stats.json", "not valid JSON"]),
    ("stats.json", "7", ["stats.json", "JSON object"]),
])
def test_damaged_checkpoints_are_one_line(tmp_path, toy_checkpoint, file, content, words):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(toy_checkpoint, ckpt, ignore=shutil.ignore_patterns("training_state"))
    (ckpt / file).write_text(content)
    assert_one_line_error(run_cli(tmp_path, "eval", "--checkpoint", str(ckpt), "--env", "test/reach",
                                  "--episodes", "1"), *words)


def test_a_pickle_as_pretrained_vision_weights_is_refused_unexecuted(tmp_path):
    import pickle

    marker = tmp_path / "executed"
    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Exploit(str(marker))))
    cfg = _with("policy.encoder", {"cameras": None, "dim": 16, "vision": {"backbone": "resnet18",
                                                                          "pretrained_path": "evil.pt"}})
    (tmp_path / "c.yaml").write_text(json.dumps(cfg))
    assert_one_line_error(run_cli(tmp_path, "train", "--config", "c.yaml"), "vision.pretrained_path", "evil.pt")
    assert not marker.exists() and not (tmp_path / "runs").exists()


class Exploit:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
