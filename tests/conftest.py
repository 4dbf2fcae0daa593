"""Shared test set-up: the LeRobot-written fixtures (tests/fixtures/, or $ROBOPOLICY_FIXTURES), an
isolated frame cache, no network."""

import os
import shutil
from pathlib import Path

import pytest
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("MUJOCO_GL", "egl")
# tests/plugins/toy_env.py registers "test/reach", a fast env for the collect / eval machinery;
# PYTHONPATH makes it importable in the spawned worker processes too.
_PLUGINS = str(Path(__file__).resolve().parent / "plugins")
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [_PLUGINS, os.environ.get("PYTHONPATH")]))
os.environ["ROBOPOLICY_PLUGINS"] = "toy_env"

sys.path.insert(0, str(Path(__file__).resolve().parent / "plugins"))
REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("ROBOPOLICY_FIXTURES", REPO / "tests" / "fixtures"))
LIFT_VIDEO = FIXTURES / "lerobot_lift_v3"
LIFT_IMAGES = FIXTURES / "lerobot_lift_v3_images"


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Frame caches go to a per-session folder so tests never reuse a cache built elsewhere."""
    os.environ["ROBOPOLICY_CACHE_DIR"] = str(tmp_path_factory.mktemp("frame-cache"))
    if not LIFT_VIDEO.is_dir():
        pytest.exit(f"LeRobot fixtures not found at {FIXTURES}; set ROBOPOLICY_FIXTURES", returncode=4)


@pytest.fixture
def lift_copy(tmp_path):
    """A writable copy of the video fixture (the originals are read-only)."""
    dst = tmp_path / "lift"
    shutil.copytree(LIFT_VIDEO, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture
def lift_images_copy(tmp_path):
    dst = tmp_path / "lift_images"
    shutil.copytree(LIFT_IMAGES, dst)
    for p in [dst, *dst.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory):
    """A flow policy trained on expert demos of the toy reach task "test/reach" (~1 min on a CPU)."""
    from robopolicy.config import load_config
    from robopolicy.sim.collect import collect
    from robopolicy.train.trainer import train

    root = tmp_path_factory.mktemp("toy")
    collect("test/reach", 30, root / "demos", workers=2, progress=False)
    cfg = load_config(None, [f"data.path={root / 'demos'}", f"output_dir={root}", "name=toy", "policy.head=flow",
                             "policy.encoder.cameras=[]", "policy.encoder.dim=32",
                             "policy.encoder.state_keys=[observation.state,observation.environment_state]",
                             "policy.denoiser.unet_dims=[32,64]", "train.steps=600", "train.batch_size=64",
                             "train.lr=2e-3", "train.warmup_steps=20", "train.save_every=600", "train.progress=false"])
    return train(cfg).checkpoint
