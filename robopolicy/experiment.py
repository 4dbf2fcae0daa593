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
        c = cfg.collect
        extra = f" and {c.dart_episodes} with DART noise {c.dart_noise}" if c.dart_episodes else ""
        print(f"[1/3] collecting {c.episodes} expert demonstrations of {c.env}{extra} into {data}")
        common = dict(images=c.images, image_size=c.image_size, workers=c.workers, overwrite=True)
        if not c.dart_episodes:
            collect(c.env, c.episodes, data, seed=c.seed, every_instruction=c.every_instruction, noise=c.noise,
                    degrade=c.degrade, **common)
            return data
        parts = [data.with_name(data.name + ".clean"), data.with_name(data.name + ".dart")]
        collect(c.env, c.episodes, parts[0], seed=c.seed, every_instruction=c.every_instruction, noise=c.noise,
                degrade=c.degrade, **common)
        collect(c.env, c.dart_episodes, parts[1], seed=c.dart_seed, every_instruction=c.every_instruction,
                noise=c.dart_noise, **common)
        from robopolicy.data.edit import write_episodes

        sources = [LeRobotDataset(p) for p in parts]
        write_episodes([(ds, list(range(ds.num_episodes))) for ds in sources], data, overwrite=True)
        for part in parts:
            shutil.rmtree(part)
    return data


def train_then_evaluate(cfg: ExperimentConfig, resume: bool = False, evaluate_after: bool = True,
                        timings: dict | None = None) -> tuple:
    """Train `cfg` (periodic evaluation when eval.every is set), then evaluate the final checkpoint
    on the config's env and seeds; returns (TrainResult, EvalResult or None). What `robopolicy
    train`, `run` and `quickstart` all do after their data is ready."""
    from robopolicy.evaluate.evaluator import evaluate
    from robopolicy.train.trainer import train

    timings = timings if timings is not None else {}
    hook = None
    if cfg.eval.env and cfg.eval.every:
        from robopolicy.evaluate.hook import training_eval_hook

        hook = training_eval_hook(cfg)
    t = time.perf_counter()
    result = train(cfg, resume=resume, eval_hook=hook)
    timings["train_s"] = time.perf_counter() - t
    if not (evaluate_after and cfg.eval.env) or result.already_complete or not _is_main_process():
        return result, None
    t = time.perf_counter()
    print(f"evaluating {cfg.eval.episodes} episodes of {cfg.eval.env} with {cfg.eval.workers} workers")
    report = evaluate(result.checkpoint, cfg.eval.env, cfg.eval, cfg.run_dir / "eval" / "final")
    timings["eval_s"] = time.perf_counter() - t
    return result, report


def _is_main_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 evaluates


def run_experiment(config: str | Path | None = None, overrides: list[str] | None = None) -> dict:
    cfg: ExperimentConfig = load_config(config or DEFAULT_CONFIG, overrides)
    timings = {}
    start = time.perf_counter()
    ensure_dataset(cfg)
    timings["collect_s"] = time.perf_counter() - start
    if cfg.run_dir.exists():
        shutil.rmtree(cfg.run_dir)
    print(f"[2/3] training a {cfg.policy.head} policy for {cfg.train.steps} steps -> {cfg.run_dir}, then [3/3]"
          f" evaluating it")
    result, report = train_then_evaluate(cfg, timings=timings)
    timings["total_s"] = time.perf_counter() - start
    return {"report": report, "train": result, "timings": timings}
