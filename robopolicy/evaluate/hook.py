"""Periodic evaluation during training: the trainer calls the hook with each checkpoint."""

from __future__ import annotations

from pathlib import Path


def training_eval_hook(cfg):
    """A function (step, checkpoint) -> metrics that evaluates in cfg.eval.env into RUN/eval/step_N."""
    from robopolicy.evaluate.evaluator import evaluate

    def hook(step: int, checkpoint: Path) -> dict:
        result = evaluate(checkpoint, cfg.eval.env, cfg.eval, cfg.run_dir / "eval" / f"step_{step:06d}",
                          progress=False)
        s = result.summary
        return {"success_rate": s["success_rate"], "ci95_low": s["ci95"][0], "ci95_high": s["ci95"][1],
                "mean_episode_length": s["mean_episode_length"]}

    return hook
