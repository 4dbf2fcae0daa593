"""Demonstration quality: per-episode scores that point at the bad takes in a dataset.

A dataset recorded by people holds takes that teach the wrong thing: shaky hands, pauses, detours,
a grasp of the wrong object. Nothing in the file says which. The scores here estimate it from the
data alone, each as a robust z-score across the dataset's episodes (0 = typical, 3 = far out):

- `action_divergence` (Belkhale et al. 2023, "Data Quality in Imitation Learning"): how far the
  demonstrator's actions are from a reference policy's actions in the demonstrator's own states.
- `incompatibility` (Gandhi et al. 2022, "Eliciting Compatible Demonstrations"): the reference
  policy's training loss on the episode. With no policy given, the reference is trained here on
  the *other* episodes (k held-out folds), so an episode is scored by a model that never saw it.
- `transition_novelty`: how far the episode's state transitions are from every other episode's
  (mean nearest-neighbour distance): a take that goes where nobody else goes.
- plain signals: `idle_fraction` (steps where the robot hardly moves), `jerk` (second difference
  of the actions), `gripper_chatter` (open/close flips per 100 steps) and `length`.

`suspicion` is the mean of the z-scores (each clipped to [-2, 6], so a single wild value cannot
decide alone and being unusually tidy earns little): higher means more likely a bad take.
Nothing here reads an episode's `source` tag: a dataset with hidden labels can be scored blind.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from robopolicy.data.dataset import LeRobotDataset
from robopolicy.errors import ConfigError

POLICY_SCORES = ("action_divergence", "incompatibility")
PLAIN_SCORES = ("transition_novelty", "idle_fraction", "jerk", "gripper_chatter", "length")
Z_CLIP = (-2.0, 6.0)


@dataclass
class QualityReport:
    """Raw per-episode values, their z-scores, and the combined `suspicion` (arrays by episode)."""

    raw: dict[str, np.ndarray]
    z: dict[str, np.ndarray]
    suspicion: np.ndarray
    reference: str  # where the policy-based scores came from

    @property
    def num_episodes(self) -> int:
        return len(self.suspicion)

    def ranking(self) -> np.ndarray:
        """Episode indices, most suspicious first."""
        return np.argsort(-self.suspicion, kind="stable")

    def to_json(self) -> dict:
        return {
            "reference": self.reference,
            "scores": list(self.raw),
            "episodes": [
                {"episode": e, "suspicion": round(float(self.suspicion[e]), 4),
                 **{k: round(float(v[e]), 6) for k, v in self.raw.items()},
                 **{f"z_{k}": round(float(v[e]), 4) for k, v in self.z.items()}}
                for e in range(self.num_episodes)
            ],
        }


def robust_z(values: np.ndarray) -> np.ndarray:
    """(x - median) / (1.4826 MAD); a constant column scores 0 everywhere."""
    values = np.asarray(values, dtype=np.float64)
    med = np.median(values)
    mad = 1.4826 * np.median(np.abs(values - med))
    if mad < 1e-12:
        spread = values.std()
        return np.zeros_like(values) if spread < 1e-12 else (values - med) / spread
    return (values - med) / mad


def _episode_rows(ds: LeRobotDataset, e: int) -> np.ndarray:
    return np.arange(ds.episodes.from_index[e], ds.episodes.to_index[e])


def _gripper_dim(ds: LeRobotDataset) -> int:
    names = ds.features["action"].get("names") or []
    if isinstance(names, dict):  # LeRobot sometimes nests names as {"motors": [...]}
        names = next(iter(names.values()), [])
    for i, name in enumerate(names):
        if "gripper" in str(name).lower():
            return i
    return int(ds.features["action"]["shape"][0]) - 1


def plain_signals(ds: LeRobotDataset, state_key: str = "observation.state") -> dict[str, np.ndarray]:
    """Signals read straight off the recorded arrays (no model)."""
    actions = ds.columns["action"].reshape(len(ds), -1).astype(np.float64)
    a_std = actions.std(axis=0) + 1e-6
    states = ds.columns[state_key].reshape(len(ds), -1).astype(np.float64) if state_key in ds.columns else actions
    grip = _gripper_dim(ds)
    g_lo, g_hi = np.percentile(actions[:, grip], [5, 95])
    g_mid = 0.5 * (g_lo + g_hi)
    # a step is "idle" when the state moves less than a tenth of the dataset's typical step
    deltas = np.concatenate([np.diff(states[_episode_rows(ds, e)], axis=0) for e in range(ds.num_episodes)
                             if ds.episodes.length[e] > 1] or [np.zeros((1, states.shape[1]))])
    d_std = deltas.std(axis=0) + 1e-6
    typical = np.median(np.linalg.norm(deltas / d_std, axis=1))
    out = {k: np.zeros(ds.num_episodes) for k in ("idle_fraction", "jerk", "gripper_chatter", "length")}
    for e in range(ds.num_episodes):
        rows = _episode_rows(ds, e)
        a = actions[rows] / a_std
        s = states[rows]
        n = len(rows)
        out["length"][e] = n
        if n > 1:
            step = np.linalg.norm(np.diff(s, axis=0) / d_std, axis=1)
            out["idle_fraction"][e] = float(np.mean(step < 0.1 * typical))
        if n > 2:
            out["jerk"][e] = float(np.mean(np.sum(np.diff(a, n=2, axis=0) ** 2, axis=1)))
        side = np.sign(actions[rows, grip] - g_mid)
        side = side[side != 0]
        out["gripper_chatter"][e] = 100.0 * float(np.count_nonzero(np.diff(side))) / max(n, 1)
    return out


def transition_novelty(ds: LeRobotDataset, state_key: str = "observation.state", per_episode: int = 32,
                       seed: int = 0) -> np.ndarray:
    """Mean distance from each episode's (state, state change) samples to their nearest neighbour
    among the *other* episodes' samples (standardized features; a fixed subsample per episode)."""
    keys = [k for k in (state_key, "observation.environment_state") if k in ds.columns]
    x = np.concatenate([ds.columns[k].reshape(len(ds), -1) for k in keys], axis=1).astype(np.float64)
    rng = np.random.default_rng(seed)
    feats, owner = [], []
    for e in range(ds.num_episodes):
        rows = _episode_rows(ds, e)
        if len(rows) < 2:
            continue
        pick = np.sort(rng.choice(len(rows) - 1, size=min(per_episode, len(rows) - 1), replace=False))
        s = x[rows[pick]]
        feats.append(np.concatenate([s, x[rows[pick + 1]] - s], axis=1))
        owner.append(np.full(len(pick), e))
    out = np.zeros(ds.num_episodes)
    if len(feats) < 2:
        return out
    f = np.concatenate(feats)
    f = (f - f.mean(axis=0)) / (f.std(axis=0) + 1e-6)
    own = np.concatenate(owner)
    ft = torch.from_numpy(f).float()
    nearest = np.empty(len(f))
    for start in range(0, len(f), 2048):
        d = torch.cdist(ft[start:start + 2048], ft)
        same = torch.from_numpy(own[start:start + 2048][:, None] == own[None, :])
        nearest[start:start + 2048] = d.masked_fill(same, math.inf).min(dim=1).values.numpy()
    for e in range(ds.num_episodes):
        mask = own == e
        if mask.any():
            out[e] = nearest[mask].mean()
    return out


@torch.no_grad()
def policy_scores(policy, ds: LeRobotDataset, episodes: Sequence[int], repeats: int = 4,
                  seed: int = 0) -> dict[int, tuple[float, float]]:
    """{episode: (action divergence, loss)} under `policy` (eval mode), on the episode's own states.

    Divergence: RMS over action dimensions (in the policy's normalized units) between the policy's
    action for step t, sampled from fixed noise, and the demonstrator's action at t. Loss: the
    policy's training loss on the episode's windows, averaged over `repeats` fixed noise draws.
    """
    from robopolicy.data.windows import WindowedDataset

    policy.eval()
    keys = policy.observation_keys
    deltas = {k: list(range(1 - policy.config.n_obs_steps, 1)) for k in keys}
    offset = policy.config.first_action_offset
    deltas["action"] = list(range(offset, offset + policy.config.horizon))
    windows = WindowedDataset(ds, deltas, episodes=list(episodes))
    device = policy.device
    out = {}
    for e in episodes:
        rows = _episode_rows(ds, e)
        divergence, losses = [], []
        for start in range(0, len(rows), 512):
            batch = windows.get_batch(rows[start:start + 512])
            batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            g = torch.Generator(device=device).manual_seed(seed)
            predicted = policy.sample_actions(batch, generator=g)[:, 0]
            demo = batch["action"][:, policy.chunk_start]
            diff = policy.normalizer.normalize("action", predicted) - policy.normalizer.normalize("action", demo)
            divergence.append(diff.pow(2).mean(dim=1).sqrt().cpu())
            for r in range(repeats):
                torch.manual_seed(seed * 1000 + r)
                losses.append((float(policy(batch)["loss"]), len(batch["index"])))
        total = sum(n for _, n in losses)
        out[e] = (float(torch.cat(divergence).mean()), sum(v * n for v, n in losses) / total)
    return out


def fold_policy_scores(cfg, ds_path: str, ds: LeRobotDataset, folds: int, workdir: Path,
                       progress: bool = True) -> dict[int, tuple[float, float]]:
    """Policy scores from `folds` policies, each trained on the episodes outside its fold and
    scoring the episodes inside it (held out: Gandhi et al.'s compatibility)."""
    from robopolicy.policy.policy import Policy
    from robopolicy.train.trainer import train

    order = np.random.default_rng(cfg.train.seed).permutation(ds.num_episodes)
    parts = np.array_split(order, folds)
    scores: dict[int, tuple[float, float]] = {}
    for k, held_out in enumerate(parts):
        train_on = sorted(int(e) for e in order if e not in set(held_out.tolist()))
        cfg.name = f"fold_{k}"
        cfg.output_dir = str(workdir)
        cfg.data.path = ds_path
        cfg.data.episodes = train_on
        cfg.eval.env = None
        cfg.train.progress = progress
        if progress:
            print(f"quality: fold {k + 1}/{folds}: training on {len(train_on)} episodes, scoring {len(held_out)}",
                  flush=True)
        result = train(cfg)
        policy = Policy.load(result.checkpoint)
        scores.update(policy_scores(policy, ds, sorted(int(e) for e in held_out)))
    return scores


def score_dataset(path: str | Path, policy_path: str | Path | None = None, cfg=None, folds: int = 3,
                  workdir: str | Path | None = None, progress: bool = True) -> QualityReport:
    """Every score for every episode of the dataset at `path`.

    With `policy_path`, that checkpoint is the reference (it may have seen the episodes it scores);
    otherwise `folds` reference policies are trained from `cfg` (an ExperimentConfig: its `policy`
    and `train` sections) on the other folds.
    """
    ds = LeRobotDataset(path)
    if ds.num_episodes < 3:
        raise ConfigError(f"{path}: quality scores compare episodes with each other; it has {ds.num_episodes}")
    raw = plain_signals(ds)
    raw = {"transition_novelty": transition_novelty(ds), **raw}
    if policy_path is not None:
        from robopolicy.policy.policy import Policy

        policy = Policy.load(policy_path)
        scores = policy_scores(policy, ds, range(ds.num_episodes))
        reference = f"policy {policy_path} (trained on these episodes or not: its loss is not held out)"
    else:
        if cfg is None:
            raise ConfigError("quality: give --policy CKPT or a config for the held-out reference policies")
        if folds < 2 or folds > ds.num_episodes:
            raise ConfigError(f"--folds must be in [2, {ds.num_episodes}], got {folds}")
        with tempfile.TemporaryDirectory(prefix="quality_", dir=workdir) as tmp:
            scores = fold_policy_scores(cfg, str(path), ds, folds, Path(tmp), progress=progress)
        reference = f"{folds} held-out-fold {cfg.policy.head} policies, {cfg.train.steps} steps each"
    raw = {"action_divergence": np.array([scores[e][0] for e in range(ds.num_episodes)]),
           "incompatibility": np.array([scores[e][1] for e in range(ds.num_episodes)]), **raw}
    z = {k: robust_z(v) for k, v in raw.items()}
    # a long take is only suspicious when longer than usual; short ones are the expert's best
    z["length"] = np.maximum(z["length"], 0.0)
    suspicion = np.mean([np.clip(v, *Z_CLIP) for v in z.values()], axis=0)
    return QualityReport(raw=raw, z=z, suspicion=suspicion, reference=reference)


_RULE = re.compile(r"^\s*(?:(best)\s*:\s*([0-9.]+)|([a-z_]+)\s*(<=|>=|<|>)\s*(-?[0-9.]+))\s*$")


def check_rule(rule: str) -> re.Match:
    """The parsed `--keep` rule, or one clear error (checked before any scoring starts)."""
    m = _RULE.match(rule)
    if not m:
        raise ConfigError(f"--keep {rule!r}: expected best:FRACTION or NAME<VALUE (e.g. suspicion<1.0)")
    if m.group(1) and not 0.0 < float(m.group(2)) <= 1.0:
        raise ConfigError(f"--keep {rule!r}: the fraction must be in (0, 1]")
    known = {"suspicion", *POLICY_SCORES, *PLAIN_SCORES} | {f"z_{k}" for k in (*POLICY_SCORES, *PLAIN_SCORES)}
    if m.group(3) and m.group(3) not in known:
        raise ConfigError(f"--keep {rule!r}: unknown score {m.group(3)!r}; known: {', '.join(sorted(known))}")
    return m


def keep_episodes(report: QualityReport, rule: str) -> list[int]:
    """Episodes a `--keep` rule keeps: 'best:0.67' (the least suspicious two thirds) or a comparison
    on any score, e.g. 'suspicion<1.0', 'z_jerk<3' (z_ names the z-score of a raw score)."""
    m = check_rule(rule)
    if m.group(1):
        fraction = float(m.group(2))
        count = max(1, int(round(fraction * report.num_episodes)))
        return sorted(int(e) for e in np.argsort(report.suspicion, kind="stable")[:count])
    name, op, value = m.group(3), m.group(4), float(m.group(5))
    if name == "suspicion":
        column = report.suspicion
    elif name.startswith("z_") and name[2:] in report.z:
        column = report.z[name[2:]]
    else:
        column = report.raw[name]
    passed = {"<": column < value, "<=": column <= value, ">": column > value, ">=": column >= value}[op]
    return [int(e) for e in np.flatnonzero(passed)]


def episode_ranges(episodes: Sequence[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8' (the form `--episodes` options read)."""
    parts, run = [], []
    for e in sorted(episodes):
        if run and e == run[-1] + 1:
            run.append(e)
            continue
        if run:
            parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [e]
    if run:
        parts.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(parts)


def format_table(report: QualityReport, top: int = 20) -> str:
    """The most suspicious episodes first, with the z-scores that made them so."""
    names = list(report.z)
    header = f"{'episode':>7} {'suspicion':>9} " + " ".join(f"{n[:12]:>12}" for n in names)
    lines = [header]
    for e in report.ranking()[:top]:
        lines.append(f"{e:>7} {report.suspicion[e]:>9.2f} " + " ".join(f"{report.z[n][e]:>12.2f}" for n in names))
    if report.num_episodes > top:
        lines.append(f"... {report.num_episodes - top} more in the JSON (z-scores shown; raw values there too)")
    return "\n".join(lines)


def write_outputs(report: QualityReport, out: Path, keep: list[int] | None = None) -> list[Path]:
    """quality.json, quality.png and (with a keep rule) keep.json in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    data = report.to_json()
    if keep is not None:
        data["keep"] = keep
        (out / "keep.json").write_text(json.dumps({"episodes": keep, "ranges": episode_ranges(keep)}, indent=1))
        written.append(out / "keep.json")
    (out / "quality.json").write_text(json.dumps(data, indent=1))
    written.insert(0, out / "quality.json")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.z)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4), gridspec_kw={"width_ratios": [2, 3]})
    order = report.ranking()
    axes[0].bar(np.arange(report.num_episodes), report.suspicion[order], width=1.0,
                color=["tab:red" if keep is not None and e not in set(keep) else "tab:blue" for e in order])
    axes[0].set_xlabel("episodes, most suspicious first")
    axes[0].set_ylabel("suspicion (mean z-score)")
    axes[0].set_title("red: left out by --keep" if keep is not None else "suspicion")
    image = np.stack([np.clip(report.z[n][order], *Z_CLIP) for n in names])
    im = axes[1].imshow(image, aspect="auto", cmap="magma", interpolation="nearest")
    axes[1].set_yticks(range(len(names)), names)
    axes[1].set_xlabel("episodes, most suspicious first")
    fig.colorbar(im, ax=axes[1], label="z-score")
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=100)
    plt.close(fig)
    written.append(out / "quality.png")
    return written
