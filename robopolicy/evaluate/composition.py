"""Choosing composition weights (GPC) on validation seeds, never on the evaluation seeds."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

from robopolicy.evaluate.config import EvalConfig


def weight_grid(parts: int, step: float = 0.25) -> list[list[float]]:
    """Every weighting of `parts` policies on a `step` grid with all weights > 0, summing to 1.

    With as many parts as the grid has steps or more (four on a 0.25 grid) only equal weights fit, so
    that is the grid: an ensemble's average, still scored on validation (and no enumeration of a
    product that grows as steps ** parts).
    """
    n = round(1 / step)
    if parts >= n:
        return [[1 / parts] * parts]
    return [[k * step for k in combo] for combo in itertools.product(range(1, n), repeat=parts) if sum(combo) == n]


def search_weights(checkpoint: str | Path, env: str, cfg: EvalConfig, out_dir: Path, seed: int = 200_000,
                   episodes: int = 20, progress: bool = True) -> tuple[list[float], list[dict]]:
    """Score each grid weighting on `episodes` validation seeds from `seed`; returns the best and the table."""
    from robopolicy.evaluate.evaluator import evaluate

    table = []
    for weights in weight_grid(1 + len(cfg.compose)):
        trial = dataclasses.replace(cfg, compose_weights=weights, seed=seed, episodes=episodes, videos=0)
        name = "_".join(f"{w:g}" for w in weights)
        result = evaluate(checkpoint, env, trial, out_dir / f"search_{name}", progress=progress)
        table.append({"weights": weights, "success_rate": result.summary["success_rate"],
                      "seeds": [seed, seed + episodes - 1]})
    best = max(table, key=lambda r: r["success_rate"])["weights"]  # first of equals: the grid's order
    (out_dir / "compose_search.json").write_text(json.dumps({"best": best, "trials": table}, indent=1))
    return best, table
