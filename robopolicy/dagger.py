"""`robopolicy dagger`: DAgger with the env's scripted expert as the labeller.

A policy trained on demonstrations drifts into states the demonstrations never show, and nothing
there tells it how to get back. DAgger (Ross et al., 2011) closes that loop: roll out the
current policy, ask the expert for its action in every state the policy visited, add those
labelled states to the data, train again, repeat. Our experts act from any state (they shadow the
rollout and keep their own phase), so the labels cost only simulation time.

    round 0   train on the demonstrations (data.path; collected first if missing)  -> round_0/
    round r   roll out round r-1's policy on `episodes_per_round` seeds, expert-labelled
              -> data/round_r: round r-1's data + the labelled episodes (source "correction")
              -> fine-tune round r-1's weights on it for `steps_per_round` steps  -> round_r/
    finally   evaluate the last round's policy on the config's evaluation seeds -> eval/final/

Run folder <output_dir>/<name>: round_K/ (ordinary training runs), data/round_K/ (LeRobot v3.0
datasets), rollouts/round_K/ (eval.json of the labelled rollouts: the policy's own success
before each round's fine-tuning), checkpoints/last (the final policy), dagger.json (per round:
seeds, episodes and frames added, rollout success, training seconds).

Seeds: demonstrations count from 0, evaluation from 100000; DAgger rollouts use
`dagger.seed` (300000) + (round - 1) * episodes_per_round + i, disjoint from both.
A killed run continues with `--resume`: finished rounds (their summary.json and dataset) are
kept; in the round in progress every labelled episode saved before the kill is kept (each is
journaled as it finishes, rollouts/round_K/labelled) and only the missing seeds are rolled out,
and its training continues from its last checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path

from robopolicy.config import ExperimentConfig, load_config
from robopolicy.data import format as fmt
from robopolicy.errors import ConfigError
from robopolicy.structs import to_dict


def round_config(cfg: ExperimentConfig, r: int, data: Path, init_from: Path | None) -> ExperimentConfig:
    """The training config of round `r`: its own run folder under the DAgger run, its data, and
    (after round 0) the previous round's weights with the round's fine-tuning budget."""
    train = cfg.train
    if init_from is not None:
        train = dataclasses.replace(train, init_from=str(init_from), steps=cfg.dagger.steps_per_round,
                                    warmup_steps=min(train.warmup_steps, cfg.dagger.steps_per_round // 10))
    return dataclasses.replace(cfg, name=f"round_{r}", output_dir=str(cfg.run_dir),
                               data=dataclasses.replace(cfg.data, path=str(data)), train=train)


class LabelledRollouts:
    """A round's expert-labelled rollouts, saved to a durable dataset one episode at a time.

    Each episode is written and journaled the moment it finishes, so a kill -9 loses only the
    episodes still running; a resumed round reopens the journal and rolls out only the seeds it
    does not hold yet. When every seed is saved, `labelled.json` (seed, success, length per
    episode) is written and the dataset finalized: both together mark the rollouts complete.
    """

    def __init__(self, folder: Path, source_features: dict, fps: int, robot_type: str | None, resume: bool):
        from robopolicy.data.writer import DatasetWriter, journaled_settings

        self.root, self.results_path = folder / "labelled", folder / "labelled.json"
        self.source_features, self.fps, self.robot_type = source_features, fps, robot_type
        self.writer = None
        self.saved: dict[int, dict] = {}
        if resume and self.complete:
            self.saved = {int(r["seed"]): r for r in json.loads(self.results_path.read_text())}
        elif resume and (settings := journaled_settings(self.root)):
            self.writer = DatasetWriter(self.root, resume=True, **settings)
            self.saved = {int(e["seed"]): e for e in self.writer.resumed_extras}
        elif folder.exists():
            shutil.rmtree(folder)

    @property
    def complete(self) -> bool:
        return self.results_path.is_file() and (self.root / fmt.INFO_PATH).is_file()

    def save(self, episode) -> None:
        """`evaluate`'s on_episode: append one labelled episode (a crashed one has no labels and
        is rolled out again on resume)."""
        from robopolicy.data.writer import DatasetWriter

        if not episode.labels:
            return
        if self.writer is None:
            recorded = episode.labels[0]
            features = {k: v for k, v in self.source_features.items() if k in recorded or k == "action"}
            dropped = sorted(k for k in self.source_features if k not in features and k not in fmt.DEFAULT_FEATURES)
            if dropped:
                print(f"[dagger] the rollouts do not record {dropped}; the aggregated dataset leaves them out")
            self.writer = DatasetWriter(self.root, fps=self.fps, features=features, robot_type=self.robot_type,
                                        overwrite=True, durable=True)
        for frame in episode.labels:
            self.writer.add_frame({k: frame[k] for k in self.writer.user_keys}, task=episode.task)
        result = {"seed": episode.seed, "success": bool(episode.success), "length": len(episode.labels),
                  "episode_index": len(self.saved)}
        self.writer.journal_extra = result
        self.writer.save_episode(source="correction")
        self.saved[episode.seed] = result

    def finish(self) -> list[dict]:
        """Close the dataset once every seed is saved; returns the per-seed results in seed order."""
        results = [self.saved[s] for s in sorted(self.saved)]
        if not self.complete:
            tmp = self.results_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1))
            tmp.replace(self.results_path)
            self.writer.finalize()
        return results


def aggregate(previous: Path, labelled: Path, order: list[int], out: Path) -> int:
    """Write `previous` + the labelled episodes (in `order`: seed order, whatever order the
    rollouts finished in) to a new dataset at `out`; returns frames added.

    The new dataset keeps the features the rollouts recorded — everything the policy reads — so
    a low-dim policy trained on a dataset that also has cameras aggregates without them (its
    rollouts render nothing)."""
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.data.edit import copy_episodes
    from robopolicy.data.writer import DatasetWriter

    source, rollouts = LeRobotDataset(previous), LeRobotDataset(labelled)
    tmp = out.with_name(out.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    features = {k: v for k, v in rollouts.features.items() if k not in fmt.DEFAULT_FEATURES}
    with DatasetWriter(tmp, fps=source.fps, features=features, robot_type=source.info.get("robot_type")) as writer:
        copy_episodes(source, writer)
        copy_episodes(rollouts, writer, order)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)  # a dataset folder under data/ is always complete
    return len(rollouts)


def train_round(rcfg: ExperimentConfig, resume: bool):
    """Train one round; a round whose training was killed continues from its last checkpoint."""
    from robopolicy.train.checkpoint import latest_checkpoint
    from robopolicy.train.trainer import train

    if resume and latest_checkpoint(rcfg.run_dir) is not None:
        print(f"[dagger] {rcfg.name}: continuing its training from {latest_checkpoint(rcfg.run_dir)}")
        return train(rcfg, resume=True)
    if rcfg.run_dir.exists():
        shutil.rmtree(rcfg.run_dir)
    return train(rcfg)


def run_dagger(config: str | Path, overrides: list[str] | None = None, resume: bool = False) -> dict:
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.evaluate.evaluator import evaluate
    from robopolicy.experiment import ensure_dataset
    from robopolicy.sim.registry import require_expert

    cfg = load_config(config, overrides)
    d = cfg.dagger
    if not cfg.eval.env:
        raise ConfigError("dagger needs eval.env: the env whose expert labels the policy's rollouts")
    require_expert(cfg.eval.env)
    run_dir = cfg.run_dir
    if run_dir.exists() and not resume:
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / "dagger.json"
    state = json.loads(state_path.read_text()) if resume and state_path.is_file() else {"rounds": []}
    resolved = json.loads(json.dumps(to_dict(cfg)))
    if state.get("config") not in (None, resolved):
        raise ConfigError(f"cannot resume {run_dir}: it was started with a different config")
    state["config"] = resolved
    timings = {"collect_s": 0.0, "train_s": 0.0, "rollout_s": 0.0, "aggregate_s": 0.0}
    start = time.perf_counter()

    def save_state() -> None:
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        tmp.replace(state_path)

    t = time.perf_counter()
    base = ensure_dataset(cfg)
    timings["collect_s"] = time.perf_counter() - t
    data, checkpoint = base, None
    for r in range(d.rounds + 1):
        done = state["rounds"][r] if r < len(state["rounds"]) else None
        round_data = base if r == 0 else run_dir / "data" / f"round_{r}"
        rcfg = round_config(cfg, r, round_data, checkpoint)
        if done is not None and (rcfg.run_dir / "summary.json").is_file():
            print(f"[dagger] round {r}: finished earlier, kept")
            checkpoint, data = rcfg.run_dir / "checkpoints" / "last", round_data
            timings["train_s"] += done["train_seconds"]
            timings["rollout_s"] += done.get("rollout_seconds", 0.0)
            continue
        record = {"round": r, "data": str(round_data)}
        if r > 0:
            first = d.seed + (r - 1) * d.episodes_per_round
            seeds = list(range(first, first + d.episodes_per_round))
            source = LeRobotDataset(data)
            store = LabelledRollouts(run_dir / "rollouts" / f"round_{r}", source.features, source.fps,
                                     source.info.get("robot_type"), resume)
            todo = [s for s in seeds if s not in store.saved]
            t = time.perf_counter()
            if todo:
                kept = f" ({len(store.saved)} saved before the interruption)" if store.saved else ""
                print(f"[dagger] round {r}: {len(todo)} expert-labelled rollouts of {checkpoint}{kept}")
                rollout_cfg = dataclasses.replace(cfg.eval, videos=0, every=0)
                evaluate(checkpoint, cfg.eval.env, rollout_cfg, run_dir / "rollouts" / f"round_{r}",
                         label_with_expert=True, beta=d.beta, seeds=todo, on_episode=store.save)
                missing = [s for s in seeds if s not in store.saved]
                if missing:  # evaluate() already raised if every one crashed
                    print(f"[dagger] round {r}: seeds {missing} crashed; the round goes on without them")
            results = store.finish()
            record["rollout_seconds"] = time.perf_counter() - t
            timings["rollout_s"] += record["rollout_seconds"]
            t = time.perf_counter()
            frames = aggregate(data, store.root, [x["episode_index"] for x in results], round_data)
            timings["aggregate_s"] += time.perf_counter() - t
            successes = sum(x["success"] for x in results)
            record.update(seeds=[seeds[0], seeds[-1]], episodes_added=len(results), frames_added=frames,
                          rollout_successes=successes, rollout_success_rate=successes / len(results))
            print(f"[dagger] round {r}: policy succeeded in {successes}/{len(results)}"
                  f" rollouts; {frames} labelled frames added -> {round_data}")
        print(f"[dagger] round {r}: training {rcfg.train.steps} steps on {round_data}")
        result = train_round(rcfg, resume)
        record["train_seconds"] = result.train_seconds
        record["steps"] = result.steps
        timings["train_s"] += result.train_seconds
        checkpoint, data = result.checkpoint, round_data
        state["rounds"] = state["rounds"][:r] + [record]
        save_state()

    final = run_dir / "checkpoints" / "last"
    if final.exists():
        shutil.rmtree(final)
    shutil.copytree(checkpoint.resolve(), final, ignore=shutil.ignore_patterns("training_state"))
    t = time.perf_counter()
    print(f"[dagger] evaluating the final policy on {cfg.eval.episodes} episodes of {cfg.eval.env}")
    report = evaluate(final, cfg.eval.env, cfg.eval, run_dir / "eval" / "final")
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - start
    state["timings"] = timings
    state["final"] = {"successes": report.summary["successes"], "episodes": report.summary["episodes"],
                      "success_rate": report.summary["success_rate"], "ci95": report.summary["ci95"]}
    save_state()
    steps = sum(r["steps"] for r in state["rounds"])
    return {"report": report, "run_dir": run_dir, "checkpoint": final, "timings": timings, "rounds": state["rounds"],
            "steps": steps, "batch_size": cfg.train.batch_size}
