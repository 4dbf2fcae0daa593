"""The `robopolicy` command line: parse arguments, then call one library function per verb.

Errors a user can cause are `RobopolicyError`s: printed as one line on stderr, exit status 2.
Heavy modules are imported inside each verb so `robopolicy --help` stays instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from robopolicy import __version__
from robopolicy.deploy.names import STRATEGIES, TOKEN_ENV
from robopolicy.errors import RobopolicyError


# ---------------------------------------------------------------------------- verbs
def cmd_info(args: argparse.Namespace) -> int:
    from robopolicy.system import system_report

    print(system_report())
    return 0


def cmd_dataset_info(args: argparse.Namespace) -> int:
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.data.inspect import describe

    print(describe(LeRobotDataset(args.path, revision=args.revision)))
    return 0


def cmd_dataset_verify(args: argparse.Namespace) -> int:
    from robopolicy.data.inspect import verify
    from robopolicy.errors import DatasetError

    if not Path(args.path).exists():  # a wrong path is the user's error, not a finding about a dataset
        raise DatasetError(f"dataset folder not found: {args.path}")
    problems = verify(args.path)
    if problems:
        for p in problems:
            print(f"problem: {p}", file=sys.stderr)
        print(f"{args.path}: {len(problems)} problem(s) found", file=sys.stderr)
        return 1
    print(f"{args.path}: OK (metadata, parquet files, indices, videos/images and stats checked)")
    return 0


def cmd_dataset_stats(args: argparse.Namespace) -> int:
    from robopolicy.data import format as fmt
    from robopolicy.data import stats as stats_lib
    from robopolicy.data.dataset import LeRobotDataset

    ds = LeRobotDataset(args.path)
    stats = ds.compute_stats()
    if args.write:
        fmt.write_json_atomic(ds.root / fmt.STATS_PATH, stats_lib.to_json(stats))
        print(f"wrote {ds.root / fmt.STATS_PATH}")
    else:
        import json

        print(json.dumps(stats_lib.to_json(stats), indent=1))
    return 0


def cmd_dataset_quality(args: argparse.Namespace) -> int:
    from robopolicy.config import load_config
    from robopolicy.data import quality
    from robopolicy.data.dataset import LeRobotDataset

    ds = LeRobotDataset(args.path)  # a bad dataset fails here, before any training
    cfg = None
    if args.policy is None:
        # a small flow policy (the low-dim recipe of configs/): fast enough to train once per fold
        base = {"policy": {"head": "flow", "denoiser": {"unet_dims": [32, 64, 128]},
                           "encoder": {"dim": 64, "state_keys": [k for k in ("observation.state", "observation.environment_state")
                                                                 if k in ds.features]}},
                "train": {"batch_size": 256, "lr": 1e-3, "warmup_steps": 50, "log_every": 100}}
        # the fold policies are quick references whatever the config trains for; --set can still change that
        steps = args.steps or 1000
        cfg = load_config(args.config, [f"train.steps={steps}", f"train.save_every={steps}", "train.keep_checkpoints=1",
                                         *args.overrides], base=base)
    elif args.config is not None or args.overrides or args.steps:
        raise RobopolicyError("--config, --steps and overrides set up the held-out reference policies; with --policy there are none")
    if args.keep is not None:
        quality.check_rule(args.keep)  # a bad rule fails before the scoring
    report = quality.score_dataset(args.path, policy_path=args.policy, cfg=cfg, folds=args.folds,
                                   progress=not args.no_progress)
    keep = quality.keep_episodes(report, args.keep) if args.keep is not None else None
    out = Path(args.out) if args.out else ds.root.parent / f"{ds.root.name}_quality"
    written = quality.write_outputs(report, out, keep)
    print(f"reference: {report.reference}")
    print(quality.format_table(report, top=args.top))
    if keep is not None:
        print(f"--keep {args.keep}: {len(keep)} of {report.num_episodes} episodes (keep.json); as a dataset:"
              f" robopolicy dataset filter {args.path} --episodes {quality.episode_ranges(keep)} --out DIR")
    print("wrote " + ", ".join(str(w) for w in written))
    return 0


def cmd_dataset_view(args: argparse.Namespace) -> int:
    from robopolicy.data.view import render_episode

    out = Path(args.out) if args.out else Path(f"{Path(args.path).name}_episode_{args.episode}.mp4")
    if out.suffix.lower() != ".mp4":
        raise RobopolicyError(f"--out {out}: dataset view writes an mp4 video (name it *.mp4)")
    render_episode(args.path, args.episode, out)
    print(f"wrote {out}")
    return 0


def cmd_dataset_finalize(args: argparse.Namespace) -> int:
    from robopolicy.data.writer import finalize_interrupted

    kept = finalize_interrupted(args.path)
    print(f"{args.path}: finalized with the {kept} episodes saved before the interruption")
    return 0


def _edit_destination(args: argparse.Namespace, source) -> tuple[Path, Path | None]:
    """Where an edit writes: --out, or (--in-place) the source folder itself, swapped in atomically."""
    if args.in_place == (args.out is not None):
        raise RobopolicyError("give exactly one of --out DIR and --in-place")
    return (source.root, source.root) if args.in_place else (Path(args.out), None)


def cmd_dataset_filter(args: argparse.Namespace) -> int:
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.data.edit import select_episodes, write_episodes

    ds = LeRobotDataset(args.path)
    keep = select_episodes(ds, args.episodes, args.task, args.source, args.min_length, args.max_length)
    out, in_place = _edit_destination(args, ds)
    write_episodes([(ds, keep)], out, overwrite=args.overwrite, in_place_of=in_place)
    print(f"kept {len(keep)} of {ds.num_episodes} episodes -> {out}")
    return 0


def cmd_dataset_delete(args: argparse.Namespace) -> int:
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.data.edit import parse_episodes, write_episodes

    ds = LeRobotDataset(args.path)
    drop = set(parse_episodes(args.episodes, ds.num_episodes))
    out, in_place = _edit_destination(args, ds)
    write_episodes([(ds, [e for e in range(ds.num_episodes) if e not in drop])], out, overwrite=args.overwrite,
                   in_place_of=in_place)
    print(f"deleted {len(drop)} of {ds.num_episodes} episodes -> {out}")
    return 0


def cmd_dataset_split(args: argparse.Namespace) -> int:
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.data.edit import split_episodes, write_episodes

    ds = LeRobotDataset(args.path)
    try:
        fractions = [float(f) for f in args.fractions.split(",")]
    except ValueError:
        raise RobopolicyError(f"--fractions: {args.fractions!r} is not a comma-separated list of numbers") from None
    names = args.names.split(",") if args.names else [f"part{i}" for i in range(len(fractions))]
    if len(names) != len(fractions) or len(set(names)) != len(names):
        raise RobopolicyError(f"--names: {len(fractions)} distinct names needed, got {args.names!r}")
    parts = split_episodes(ds.num_episodes, fractions, args.seed)
    for name, episodes in zip(names, parts):
        write_episodes([(ds, episodes)], Path(args.out) / name, overwrite=args.overwrite)
        print(f"{name}: {len(episodes)} episodes -> {Path(args.out) / name}")
    return 0


def cmd_dataset_merge(args: argparse.Namespace) -> int:
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.data.edit import check_mergeable, write_episodes

    datasets = [LeRobotDataset(p) for p in args.paths]
    check_mergeable(datasets)
    write_episodes([(ds, list(range(ds.num_episodes))) for ds in datasets], args.out, overwrite=args.overwrite)
    print(f"merged {sum(ds.num_episodes for ds in datasets)} episodes of {len(datasets)} datasets -> {args.out}")
    return 0


def cmd_dataset_convert(args: argparse.Namespace) -> int:
    from robopolicy.data.convert import convert_robomimic

    cameras = None
    if args.camera:
        cameras = {}
        for item in args.camera:
            if "=" not in item:
                raise RobopolicyError(f"--camera expects SOURCE_KEY=NAME, got {item!r}")
            src, name = item.split("=", 1)
            cameras[src] = name
    out = convert_robomimic(
        args.input, args.out, fps=args.fps, task=args.task,
        state_keys=args.state_keys.split(","),
        env_state_keys=[k for k in args.env_state_keys.split(",") if k],
        cameras=cameras, camera_storage=args.camera_storage, video_codec=args.codec,
        flip_images=args.flip_images, overwrite=args.overwrite, max_episodes=args.max_episodes,
    )
    from robopolicy.data.dataset import LeRobotDataset

    ds = LeRobotDataset(out)
    print(f"wrote {out}: {ds.num_episodes} episodes, {len(ds)} frames")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from robopolicy.config import load_config

    config_path = args.config
    if args.resume and args.resume is not True:
        run_dir = Path(args.resume)
        config_path = config_path or run_dir / "config.yaml"
    cfg = load_config(config_path, args.overrides)
    if args.resume and args.resume is not True and cfg.run_dir.resolve() != Path(args.resume).resolve():
        raise RobopolicyError(f"--resume {args.resume} but the config's run folder is {cfg.run_dir}")
    if cfg.eval.env and not args.no_eval:  # fail now, not after the training it would follow
        from robopolicy.errors import EnvError
        from robopolicy.sim.registry import entry

        try:
            entry(cfg.eval.env)
        except EnvError as err:
            raise EnvError(f"eval.env: {err} (or train with --no-eval)") from None
    from robopolicy.experiment import train_then_evaluate

    result, report = train_then_evaluate(cfg, resume=bool(args.resume), evaluate_after=not args.no_eval)
    import os

    if result.already_complete or int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"trained {result.steps} steps in {result.train_seconds:.0f} s ({result.samples_per_s:.1f} samples/s),"
          f" final loss {result.final_loss:.4f}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"run folder: {result.run_dir} (config.yaml, metrics.jsonl, loss.png, summary.json)")
    if report is not None:
        print_eval(report)
    return 0


def print_eval(report) -> None:
    s = report.summary
    lo, hi = s["ci95"]
    length = s["mean_episode_length"]
    print(f"success rate {s['success_rate']:.1%} ({s['successes']}/{s['episodes']}, 95% CI {lo:.1%}-{hi:.1%})"
          f" on {s['env']}" + (f", mean episode length {length:.0f} steps" if length is not None else ""))
    if s["failed_runs"]:
        print(f"{len(s['failed_runs'])} episode(s) crashed and were counted as failures (see eval.json)")
    print(f"report: {report.out_dir / 'eval.json'}, plot: {report.out_dir / 'summary.png'}")
    if s["videos"]:
        print(f"videos: {Path(s['videos'][0]).parent} ({len(s['videos'])} mp4)")


def cmd_collect(args: argparse.Namespace) -> int:
    from robopolicy.sim.collect import collect

    require_positive(args, "episodes", "workers", "max_steps")
    result = collect(args.env, args.episodes, args.out, images=args.images, image_size=args.image_size,
                     workers=args.workers, seed=args.seed, keep_failed=args.keep_failed, max_steps=args.max_steps,
                     video_codec=args.codec, overwrite=args.overwrite, progress=not args.no_progress,
                     every_instruction=args.every_instruction, noise=args.noise, resume=args.resume,
                     degrade=args.degrade)
    print(f"wrote {result.root}: {result.kept} episodes, {result.frames} frames"
          f" (expert success {result.successes}/{result.attempted})")
    return 0


def _compose_weights(text: str | None) -> list[float] | None:
    """--compose-weights 0.6,0.4 -> [0.6, 0.4] (checked to sum to 1 by the composition itself)."""
    if not text:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise RobopolicyError(f"--compose-weights: {text!r} is not a list of numbers") from None


def cmd_eval(args: argparse.Namespace) -> int:
    from robopolicy.evaluate.config import EvalConfig
    from robopolicy.evaluate.evaluator import evaluate
    from robopolicy.structs import from_dict

    require_positive(args, "episodes", "workers", "max_steps", "n_action_steps", "inference_steps")
    if args.envs < 0:
        raise RobopolicyError(f"--envs must be >= 0 (0 = unbatched), got {args.envs}")
    weights = _compose_weights(args.compose_weights)
    if (weights or args.compose_search) and not args.compose:
        raise RobopolicyError("--compose-weights and --compose-search need --compose CHECKPOINT")
    cfg = from_dict(EvalConfig, {
        "env": args.env, "episodes": args.episodes, "workers": args.workers, "envs": args.envs, "seed": args.seed,
        "inference_steps": args.inference_steps, "n_action_steps": args.n_action_steps,
        "timestep_spacing": args.timestep_spacing, "execution": args.execution, "weights": args.weights,
        "max_steps": args.max_steps, "videos": args.videos,
        "compose": args.compose or [], "compose_weights": weights})
    out = args.out or Path(args.checkpoint).resolve().parent.parent / "eval" / Path(args.checkpoint).resolve().name
    if args.compose_search:
        from robopolicy.evaluate.composition import search_weights
        from robopolicy.evaluate.config import seed_ranges_overlap

        if seed_ranges_overlap(args.seed, args.episodes, args.search_seed, args.search_episodes):
            raise RobopolicyError("--search-seed: the validation seeds overlap the evaluation seeds")
        best, table = search_weights(args.checkpoint, args.env, cfg, Path(out), args.search_seed,
                                     args.search_episodes, progress=not args.no_progress)
        for row in table:
            print(f"weights {row['weights']}: {row['success_rate']:.1%} on validation seeds {row['seeds']}")
        print(f"chosen on validation seeds: {best}")
        cfg.compose_weights = best
    print_eval(evaluate(args.checkpoint, args.env, cfg, out, progress=not args.no_progress))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from robopolicy.experiment import run_experiment

    out = run_experiment(args.config, args.overrides)
    t = out["timings"]
    print_eval(out["report"])
    print(f"checkpoint: {out['train'].checkpoint}  (loss curve: {out['train'].run_dir / 'loss.png'})")
    print(f"time: collect {t['collect_s']:.0f} s, train {t['train_s']:.0f} s, evaluate {t['eval_s']:.0f} s,"
          f" total {t['total_s'] / 60:.1f} min")
    return 0


def cmd_dagger(args: argparse.Namespace) -> int:
    from robopolicy.dagger import run_dagger

    overrides = list(args.overrides)
    for flag, key in ((args.rounds, "rounds"), (args.episodes_per_round, "episodes_per_round"),
                      (args.steps_per_round, "steps_per_round"), (args.beta, "beta")):
        if flag is not None:
            overrides.append(f"dagger.{key}={flag}")
    out = run_dagger(args.config, overrides, resume=args.resume)
    for r in out["rounds"][1:]:
        print(f"round {r['round']}: policy {r['rollout_successes']}/{r['episodes_added']} on its labelled rollouts,"
              f" +{r['frames_added']} frames, {r['train_seconds']:.0f} s of training")
    print_eval(out["report"])
    t = out["timings"]
    print(f"checkpoint: {out['checkpoint']}  (rounds: {out['run_dir'] / 'dagger.json'})")
    print(f"time: collect {t['collect_s']:.0f} s, train {t['train_s']:.0f} s (all rounds), rollouts"
          f" {t['rollout_s']:.0f} s, evaluate {t['eval_s']:.0f} s, total {t['total_s'] / 60:.1f} min")
    return 0


def cmd_finetune(args: argparse.Namespace) -> int:
    from robopolicy.rl.finetune import finetune, load_finetune_config

    overrides = list(args.overrides)
    for flag, key in ((args.checkpoint, "checkpoint"), (args.env, "env"), (args.iterations, "iterations")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    out = finetune(load_finetune_config(args.config, overrides), resume=args.resume)
    after = out["success_after"]
    print(f"success on {out['episodes']} evaluation seeds: {out['success_before']:.1%} before ->"
          f" {after:.1%} after" if after is not None else "")
    print(f"fine-tuned policy: {out['fine_tuned']}  ({out['env_steps']} env steps, {out['wall_seconds'] / 60:.1f} min)")
    return 0


def _key_values(items: list[str] | None) -> dict:
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise RobopolicyError(f"expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = yaml.safe_load(value)
    return out


def require_positive(args: argparse.Namespace, *names: str) -> None:
    """Counts given on the command line must be >= 1: a 0 is refused, never silently replaced."""
    for name in names:
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise RobopolicyError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def cmd_deploy(args: argparse.Namespace) -> int:
    import json
    import math
    import os

    from robopolicy.deploy.loop import WatchdogConfig
    from robopolicy.deploy.run import deploy, make_robot
    from robopolicy.deploy.safety import SafetyConfig

    if bool(args.checkpoint) == bool(args.server):
        raise RobopolicyError("give exactly one of --checkpoint (local policy) or --server (policy server URL)")
    if not (math.isfinite(args.hz) and args.hz > 0):
        raise RobopolicyError(f"--hz must be a positive number of control steps per second, got {args.hz:g}")
    if args.server and not args.server.startswith(("ws://", "wss://")):
        raise RobopolicyError(f"--server must be a ws:// or wss:// URL, got {args.server!r}")
    require_positive(args, "max_steps", "n_action_steps", "inference_steps")
    if not (math.isfinite(args.record_segment_s) and args.record_segment_s >= 0):
        raise RobopolicyError(f"--record-segment-s must be >= 0 seconds (0: one episode), got {args.record_segment_s:g}")
    if (args.compose or args.compose_weights) and not args.checkpoint:
        raise RobopolicyError("--compose and --compose-weights apply to a local --checkpoint")
    if args.compose_weights and not args.compose:
        raise RobopolicyError("--compose-weights needs --compose CHECKPOINT")
    if args.compose:
        from robopolicy.policy.compose import load_composed

        if args.compile or args.device not in ("auto", "cpu"):
            raise RobopolicyError("--compose runs on the CPU without --compile")
        policy = load_composed([args.checkpoint, *args.compose], _compose_weights(args.compose_weights))
    elif args.checkpoint:
        from robopolicy.policy.policy import Policy

        policy = Policy.load(args.checkpoint, device=args.device)
        if args.compile:
            policy.compile_for_inference(vision_bf16=args.compile == "bf16-vision")
    else:
        if args.compile or args.device != "auto":
            raise RobopolicyError("--device and --compile apply to a local --checkpoint; set them on the policy server")
        from robopolicy.deploy.client import PolicyClient

        token = args.token or os.environ.get(TOKEN_ENV, "")
        policy = PolicyClient(args.server, token, timeout_s=args.timeout)
    robot = make_robot(args.robot, policy, seed=args.seed, robot_config=_key_values(args.robot_config))
    safety = SafetyConfig(max_delta_fraction=args.max_delta_fraction)
    watchdog = WatchdogConfig(max_observation_age_s=args.max_observation_age, max_inference_s=args.max_inference_s)
    report = deploy(policy, robot, hz=args.hz, duration_s=args.duration, max_steps=args.max_steps,
                    strategy=args.strategy, n_action_steps=args.n_action_steps, inference_steps=args.inference_steps,
                    safety=safety, watchdog=watchdog, record=args.record, seed=args.seed,
                    stop_when_done=not args.keep_running, latency_margin_steps=args.latency_margin,
                    record_segment_s=args.record_segment_s or None)
    s = report.summary()
    print(f"stopped: {s['stop_reason']} after {s['steps']} steps at {args.hz:g} Hz"
          + (f"; task success: {s['success']}" if s["success"] is not None else ""))
    print(f"loop period error p50 {s['period_error_ms_p50']:.2f} ms, p99 {s['period_error_ms_p99']:.2f} ms;"
          f" missed actions {s['missed_actions']}, missed deadlines {s['missed_deadlines']}")
    inf = s["inference"]
    if inf["latency_ms_p50"] is not None:
        print(f"inference ({inf['strategy']}): {inf['count']} chunks, latency p50 {inf['latency_ms_p50']:.1f} ms,"
              f" p99 {inf['latency_ms_p99']:.1f} ms")
    print(f"safety: {s['safety']['clipped_bounds']} actions clipped to bounds, {s['safety']['clipped_rate']} rate-limited")
    if args.record and (Path(args.record) / "meta" / "info.json").is_file():
        print(f"recorded: {args.record}")
    if args.report:
        Path(args.report).write_text(json.dumps(s, indent=1))
    return 0 if report.clean else 1


def cmd_serve(args: argparse.Namespace) -> int:
    import os

    from robopolicy.deploy.server import PolicyServer, load_server_policy, new_token

    require_positive(args, "max_message_mb", "max_steps")
    token = args.token or os.environ.get(TOKEN_ENV) or new_token()
    policy = load_server_policy(args.checkpoint, args.device)
    if args.compile:
        policy.compile_for_inference(vision_bf16=args.compile == "bf16-vision")
    server = PolicyServer(policy, token, host=args.host, port=args.port,
                          max_message_bytes=args.max_message_mb * 1024 * 1024, max_steps=args.max_steps)
    if not (args.token or os.environ.get(TOKEN_ENV)):
        print(f"token: {token}  (give it to clients with --token or {TOKEN_ENV})")
    print(f"serving {args.checkpoint} on ws://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def cmd_envs(args: argparse.Namespace) -> int:
    from robopolicy.sim.registry import entry, env_names

    for name in env_names():
        print(f"{name:<28} {entry(name).description}")
    return 0


# ---------------------------------------------------------------------------- parser
def add_edit_output(p: argparse.ArgumentParser) -> None:
    """Where a dataset edit writes: --out, or --in-place."""
    p.add_argument("--out", default=None, help="new dataset folder")
    p.add_argument("--in-place", action="store_true", help="replace PATH (atomically) instead of writing --out")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds anything")


def add_compile_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", nargs="?", const="fp32", choices=["fp32", "bf16-vision"], default=None,
                   help="faster chunks for a local policy: CUDA graphs on a GPU, ONNX Runtime on a CPU;"
                        " 'bf16-vision': camera trunks in bf16 on a CPU with AMX / AVX512-BF16")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="robopolicy", description="Robot imitation learning and VLA policies.")
    parser.add_argument("--version", action="version", version=f"robopolicy {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = verbs.add_parser("info", help="versions, devices and optional components of this installation")
    p.set_defaults(func=cmd_info)

    dataset = verbs.add_parser("dataset", help="inspect, verify, edit and convert LeRobot v3.0 datasets")
    dverbs = dataset.add_subparsers(dest="dataset_verb", required=True, metavar="ACTION")
    p = dverbs.add_parser("info", help="episodes, frames, fps, features, tasks and stats")
    p.add_argument("path", help="dataset folder or hub repo id (owner/name)")
    p.add_argument("--revision", default=None, help="hub revision when PATH is a repo id")
    p.set_defaults(func=cmd_dataset_info)
    p = dverbs.add_parser("verify", help="check every file of a dataset and report problems")
    p.add_argument("path")
    p.set_defaults(func=cmd_dataset_verify)
    p = dverbs.add_parser("stats", help="recompute normalization statistics from the data")
    p.add_argument("path")
    p.add_argument("--write", action="store_true", help="replace meta/stats.json instead of printing")
    p.set_defaults(func=cmd_dataset_stats)
    p = dverbs.add_parser("filter", help="a new dataset with the episodes that pass every given rule")
    p.add_argument("path")
    p.add_argument("--episodes", default=None, help="episode indices to keep, e.g. 0,3,5-9")
    p.add_argument("--task", default=None, help="keep episodes with this task string")
    p.add_argument("--source", default=None, help="keep episodes with this source tag (e.g. demonstration, correction)")
    p.add_argument("--min-length", type=int, default=None)
    p.add_argument("--max-length", type=int, default=None)
    add_edit_output(p)
    p.set_defaults(func=cmd_dataset_filter)
    p = dverbs.add_parser("delete-episodes", help="a new dataset without the given episodes")
    p.add_argument("path")
    p.add_argument("--episodes", required=True, help="episode indices to delete, e.g. 0,3,5-9")
    add_edit_output(p)
    p.set_defaults(func=cmd_dataset_delete)
    p = dverbs.add_parser("split", help="split the episodes at random into datasets OUT/<name>")
    p.add_argument("path")
    p.add_argument("--out", required=True, help="folder for the parts")
    p.add_argument("--fractions", default="0.9,0.1", help="comma-separated, summing to 1")
    p.add_argument("--names", default="train,val", help="comma-separated part names")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_dataset_split)
    p = dverbs.add_parser("merge", help="one dataset with every episode of several (same features, fps, robot)")
    p.add_argument("paths", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_dataset_merge)
    p = dverbs.add_parser("finalize", help="make a killed collection or deploy recording a dataset of its saved episodes")
    p.add_argument("path")
    p.set_defaults(func=cmd_dataset_finalize)
    p = dverbs.add_parser("view", help="one episode as an mp4: cameras side by side, state/action curves under them")
    p.add_argument("path")
    p.add_argument("--episode", type=int, required=True)
    p.add_argument("--out", default=None, help="mp4 file (default: <dataset>_episode_<N>.mp4 here)")
    p.set_defaults(func=cmd_dataset_view)
    p = dverbs.add_parser("quality", help="per-episode quality scores (divergence, compatibility, diversity, idle, jerk, ...)")
    p.add_argument("path")
    p.add_argument("--policy", default=None, help="reference policy checkpoint (default: train held-out-fold policies)")
    p.add_argument("--config", type=Path, default=None,
                   help="experiment YAML whose policy/train sections shape the held-out policies (default: low-dim flow)")
    p.add_argument("--folds", type=int, default=3, help="held-out folds (one reference policy each)")
    p.add_argument("--steps", type=int, default=None, help="training steps per fold policy (default 1000)")
    p.add_argument("--keep", default=None, metavar="RULE",
                   help="write keep.json with the episodes to train on: best:0.67, suspicion<1.0, z_jerk<3, ...")
    p.add_argument("--out", default=None, help="folder for quality.json, quality.png, keep.json (default: PATH_quality)")
    p.add_argument("--top", type=int, default=20, help="rows of the terminal table")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="key.sub=value",
                   help="override of the fold policies' config (repeatable), e.g. --set train.steps=2000")
    p.set_defaults(func=cmd_dataset_quality)
    p = dverbs.add_parser("convert", help="convert robomimic HDF5 demonstrations to LeRobot v3.0")
    p.add_argument("input", help="robomimic .hdf5 file")
    p.add_argument("--out", required=True, help="output dataset folder")
    p.add_argument("--from", dest="source_format", default="robomimic", choices=["robomimic"])
    p.add_argument("--fps", type=int, default=20)
    p.add_argument("--task", default=None, help="task string (default: the env name in the file)")
    p.add_argument("--state-keys", default="robot0_eef_pos,robot0_eef_quat,robot0_gripper_qpos",
                   help="comma-separated obs keys concatenated into observation.state")
    p.add_argument("--env-state-keys", default="object",
                   help="comma-separated obs keys for observation.environment_state ('' for none)")
    p.add_argument("--camera", action="append", metavar="SOURCE=NAME",
                   help="obs image key and its camera name, e.g. agentview_image=agentview (repeatable)")
    p.add_argument("--camera-storage", choices=["video", "image"], default="video")
    p.add_argument("--codec", choices=["av1", "h264"], default="av1")
    p.add_argument("--flip-images", action="store_true", help="flip images vertically (OpenGL-rendered sources)")
    p.add_argument("--max-episodes", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_dataset_convert)
    p = verbs.add_parser("train", help="train a policy from a YAML config (+ key.sub=value overrides)")
    p.add_argument("--config", type=Path, default=None, help="experiment YAML, e.g. configs/lift_lowdim_diffusion.yaml")
    p.add_argument("--resume", nargs="?", const=True, default=False, metavar="RUN_DIR",
                   help="continue the run from its last checkpoint (RUN_DIR defaults to the config's run folder)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation after training")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides, e.g. train.steps=500")
    p.set_defaults(func=cmd_train)

    p = verbs.add_parser("quickstart", help="collect demos -> train -> evaluate on the built-in default (CPU, minutes)")
    p.add_argument("--config", type=Path, default=None, help="default: configs/quickstart_lift_lowdim.yaml")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_run)

    p = verbs.add_parser("run", help="a whole experiment from one config: collect (if needed) -> train -> evaluate")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_run)

    p = verbs.add_parser("dagger", help="train, then rounds of expert-labelled policy rollouts + fine-tuning (DAgger)")
    p.add_argument("--config", type=Path, required=True, help="experiment YAML; its dagger: section sets the defaults")
    p.add_argument("--rounds", type=int, default=None, help="labelling rounds after the initial training")
    p.add_argument("--episodes-per-round", type=int, default=None, help="policy rollouts labelled per round")
    p.add_argument("--steps-per-round", type=int, default=None, help="fine-tuning steps after each round")
    p.add_argument("--beta", type=float, default=None, help="probability a rollout step executes the expert's action")
    p.add_argument("--resume", action="store_true", help="continue a killed run, keeping its finished rounds")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_dagger)

    p = verbs.add_parser("finetune", help="RL fine-tuning (PPO over the denoising chain) of a flow or diffusion policy")
    p.add_argument("--checkpoint", default=None, help="the behaviour-cloned policy to start from")
    p.add_argument("--env", default=None, help="registered env (default: the one the checkpoint's run evaluated on)")
    p.add_argument("--config", type=Path, default=None, help="finetune YAML (robopolicy.rl.config)")
    p.add_argument("--iterations", type=int, default=None, help="rollout + update rounds")
    p.add_argument("--resume", action="store_true", help="continue a killed run from its last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value")
    p.set_defaults(func=cmd_finetune)

    p = verbs.add_parser("deploy", help="drive a robot (simulated or real) with a policy at a fixed rate")
    p.add_argument("--checkpoint", default=None, help="local policy checkpoint folder")
    p.add_argument("--server", default=None, help="policy server URL instead of a local policy, ws://host:port")
    p.add_argument("--token", default=None, help=f"policy server token (default ${TOKEN_ENV})")
    p.add_argument("--timeout", type=float, default=2.0, help="policy server request timeout, seconds")
    p.add_argument("--device", default="auto", help="where a local policy runs: auto (cuda, else mps, else cpu), cpu, cuda")
    add_compile_option(p)
    p.add_argument("--compose", action="append", metavar="CHECKPOINT",
                   help="another flow (or diffusion) policy sampling every chunk with --checkpoint (GPC); repeatable")
    p.add_argument("--compose-weights", default=None, help="composition weights, --checkpoint's first, e.g. 0.6,0.4")
    p.add_argument("--robot", default="sim:robosuite/Lift", help="sim:<env> or lerobot:<robot type>")
    p.add_argument("--robot-config", action="append", metavar="key=value",
                   help="robot options, e.g. port=/dev/ttyACM0 (lerobot) or max_steps=300 (sim); repeatable")
    p.add_argument("--hz", type=float, default=20.0)
    p.add_argument("--duration", type=float, default=None, help="seconds to run (default: until the episode ends)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--strategy", choices=STRATEGIES, default="async")
    p.add_argument("--n-action-steps", type=int, default=None)
    p.add_argument("--inference-steps", type=int, default=None)
    p.add_argument("--latency-margin", type=int, default=1,
                   help="async/rtc: ticks of actions kept queued beyond the measured inference latency")
    p.add_argument("--max-delta-fraction", type=float, default=0.5,
                   help="rate limit: largest change per step as a fraction of the action range")
    p.add_argument("--max-observation-age", type=float, default=0.25, help="watchdog: stale observation, seconds")
    p.add_argument("--max-inference-s", type=float, default=2.0, help="watchdog: inference budget, seconds")
    p.add_argument("--seed", type=int, default=100_000)
    p.add_argument("--record", default=None, help="write the run as a LeRobot v3.0 dataset to this folder")
    p.add_argument("--record-segment-s", type=float, default=10.0, metavar="SECONDS",
                   help="save the recording as episodes of at most this long, each safe from a kill once saved"
                        " (0: the whole run as one episode)")
    p.add_argument("--report", default=None, help="write the loop statistics as JSON")
    p.add_argument("--keep-running", action="store_true", help="sim: do not stop when the episode ends")
    p.set_defaults(func=cmd_deploy)

    p = verbs.add_parser("serve", help="serve a policy over websockets (token-protected)")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", default=None, help=f"shared token (default ${TOKEN_ENV}, else a new one is printed)")
    p.add_argument("--device", default="auto")
    add_compile_option(p)
    p.add_argument("--max-message-mb", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=None,
                   help="most denoising steps a request may ask for (default: the policy's own setting)")
    p.set_defaults(func=cmd_serve)

    p = verbs.add_parser("envs", help="list the registered simulation tasks")
    p.set_defaults(func=cmd_envs)

    p = verbs.add_parser("collect", help="scripted-expert demonstrations -> LeRobot v3.0 dataset")
    p.add_argument("--env", required=True, help="registered env, e.g. robosuite/Lift (see `robopolicy envs`)")
    p.add_argument("--episodes", type=int, default=50, help="episodes to keep")
    p.add_argument("--out", required=True, help="dataset folder to create")
    p.add_argument("--images", action="store_true", help="record camera images (video) as well as low-dim state")
    p.add_argument("--image-size", type=int, default=84)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="first episode seed (evaluation uses 100000 and up)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--keep-failed", action="store_true", help="also keep episodes where the expert failed")
    p.add_argument("--every-instruction", action="store_true",
                   help="record each layout (seed) once per instruction the env knows, e.g. all three "
                        "colours of tabletop/pick, so that only the instruction tells the episodes apart")
    p.add_argument("--noise", type=float, default=0.0,
                   help="DART: execute the expert's action plus Gaussian noise of this standard deviation (action"
                        " units) and record the clean action, so the demos show how to recover from small errors")
    p.add_argument("--degrade", type=float, default=0.0, metavar="FRACTION",
                   help="make this fraction of the episodes (chosen by seed) shaky, hesitant or detouring takes,"
                        " tagged source: degraded-<kind> (a known answer for `dataset quality`)")
    p.add_argument("--codec", choices=["av1", "h264"], default="av1")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it holds anything")
    p.add_argument("--resume", action="store_true",
                   help="continue a collection into --out that was killed, after its last saved episode")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_collect)

    p = verbs.add_parser("eval", help="evaluate a checkpoint in simulation (success rate, videos, eval.json)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, e.g. runs/NAME/checkpoints/last")
    p.add_argument("--env", required=True)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--envs", type=int, default=0,
                   help="batched evaluation: N envs over the workers, one policy call per decision for all of them"
                        " (no videos); 0 = one policy per worker")
    p.add_argument("--seed", type=int, default=100_000, help="first episode seed")
    p.add_argument("--inference-steps", type=int, default=None, help="diffusion / flow steps (default: the policy's)")
    p.add_argument("--n-action-steps", type=int, default=None, help="actions executed per chunk")
    p.add_argument("--timestep-spacing", choices=["leading", "trailing"], default=None,
                   help="a diffusion policy's sampler spacing (default: the policy's own)")
    p.add_argument("--execution", choices=["receding", "ensemble"], default="receding")
    p.add_argument("--weights", choices=["ema", "raw"], default="ema")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--videos", type=int, default=4, help="episodes to save as mp4 (successes and failures)")
    p.add_argument("--compose", action="append", metavar="CHECKPOINT",
                   help="another flow (or diffusion) policy to sample with (GPC; repeatable): velocities (noise predictions) combined at every step")
    p.add_argument("--compose-weights", default=None, help="composition weights, this checkpoint's first, e.g. 0.6,0.4")
    p.add_argument("--compose-search", action="store_true",
                   help="choose the weights on validation seeds (--search-seed) first, then evaluate")
    p.add_argument("--search-seed", type=int, default=200_000, help="first validation seed for --compose-search")
    p.add_argument("--search-episodes", type=int, default=20, help="validation episodes per weighting")
    p.add_argument("--out", type=Path, default=None, help="report folder (default RUN/eval/<checkpoint name>)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RobopolicyError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
