"""Configs: YAML + dotted overrides, typed, unknown keys rejected with a useful message."""

import subprocess
import sys
from pathlib import Path

import pytest

from robopolicy.config import load_config, save_config
from robopolicy.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_yaml_and_overrides_are_typed(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: lift\ntrain:\n  steps: 100\n  lr: 3e-4\npolicy:\n  head: flow\n")
    cfg = load_config(path, ["train.steps=250", "policy.encoder.cameras=[observation.images.wrist]",
                             "train.ema=false", "policy.flow.num_inference_steps=4"])
    assert cfg.name == "lift" and cfg.train.steps == 250 and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.policy.head == "flow" and cfg.policy.flow.num_inference_steps == 4
    assert cfg.policy.encoder.cameras == ["observation.images.wrist"] and cfg.train.ema is False
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("override,message", [
    (["train.lrr=1"], "unknown config key 'train.lrr' (did you mean 'train.lr'?)"),
    (["policy.head=gan"], "policy.head: 'gan' is not one of"),
    (["train.steps=many"], "train.steps: expected an integer"),
    (["train.steps=0"], "train.steps and train.batch_size must be >= 1"),
    (["policy.horizon=16", "policy.n_action_steps=40"], "n_action_steps must be in"),
    (["train"], "must look like key.sub=value"),
])
def test_bad_configs_fail_with_one_clear_line(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, override)
    assert message in str(err.value)


def test_every_shipped_config_loads():
    configs = sorted((REPO / "configs").glob("*.yaml"))
    assert configs, "configs/ is empty"
    for path in configs:
        load_config(path)
    from robopolicy.rl.finetune import load_finetune_config

    finetune = sorted((REPO / "configs" / "finetune").glob("*.yaml"))
    assert finetune, "configs/finetune/ is empty"
    for path in finetune:  # `robopolicy finetune --config` files
        load_finetune_config(path, [])


def test_cli_reports_unknown_key_and_exits_2(tmp_path):
    result = subprocess.run([sys.executable, "-m", "robopolicy.cli", "train", "train.stepz=5"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "error: unknown config key 'train.stepz' (did you mean 'train.steps'?)"


def test_cli_checks_the_evaluation_env_before_training(tmp_path):
    """A misspelt eval.env must not cost a whole training run before it is noticed."""
    result = subprocess.run([sys.executable, "-m", "robopolicy.cli", "train", "--config",
                             str(REPO / "configs" / "lift_lowdim_flow.yaml"), "eval.env=robosuite/Lfit",
                             f"output_dir={tmp_path / 'runs'}"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error: eval.env: unknown env 'robosuite/Lfit' (did you mean 'robosuite/Lift'?)")
    assert result.stderr.strip().endswith("(or train with --no-eval)")
    assert not (tmp_path / "runs").exists()
