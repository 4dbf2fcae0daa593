"""`robopolicy run` and `robopolicy quickstart`: a whole experiment from one config.

collect scripted-expert demonstrations (the config's `collect:` section; skipped when data.path
already holds a dataset) -> train -> evaluate in simulation (the `eval:` section) -> report.
`quickstart` is `run` on the built-in default, configs/quickstart_lift_lowdim.yaml: robosuite Lift
from low-dim state, on a CPU, in minutes. The run folder is recreated on every call; the dataset is
kept and reused.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from robopolicy.config import ExperimentConfig, load_config

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "quickstart_lift_lowdim.yaml"


def ensure_dataset(cfg: ExperimentConfig) -> Path:
    """data.path, collected first (the config's `collect:` section) when it holds no dataset yet."""
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.errors import DatasetError
    from robopolicy.sim.collect import collect

    data = Path(cfg.data.path)
    try:
        LeRobotDataset(data)
        print(f"[1/3] using the demonstrations in {data}")
    except DatasetError:
        if not cfg.collect.env:
            raise
        print(f"[1/3] collecting {cfg.collect.episodes} expert demonstrations of {cfg.collect.env} into {data}")
        c = cfg.collect
        collect(c.env, c.episodes, data, images=c.images, image_size=c.image_size, workers=c.workers, seed=c.seed,
                every_instruction=c.every_instruction, noise=c.noise, overwrite=True)
    return data


def run_experiment(config: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    from robopolicy.evaluate.evaluator import evaluate
    from robopolicy.train.trainer import train

    cfg: ExperimentConfig = load_config(config or DEFAULT_CONFIG, overrides)
    timings = {}
    start = time.perf_counter()
    ensure_dataset(cfg)
    timings["collect_s"] = time.perf_counter() - start

    t = time.perf_counter()
    if cfg.run_dir.exists():
        shutil.rmtree(cfg.run_dir)
    print(f"[2/3] training a {cfg.policy.head} policy for {cfg.train.steps} steps -> {cfg.run_dir}")
    result = train(cfg)
    timings["train_s"] = time.perf_counter() - t

    t = time.perf_counter()
    print(f"[3/3] evaluating {cfg.eval.episodes} episodes of {cfg.eval.env} with {cfg.eval.workers} workers")
    report = evaluate(result.checkpoint, cfg.eval.env, cfg.eval, cfg.run_dir / "eval" / "final")
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - start
    return {"report": report, "train": result, "timings": timings}
