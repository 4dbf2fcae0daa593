"""`robopolicy dataset info` and `robopolicy dataset verify`: describe a dataset, check every file."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from robopolicy.data import format as fmt
from robopolicy.data.dataset import LeRobotDataset, load_stats
from robopolicy.data.frame_cache import FrameCache
from robopolicy.errors import DatasetError


def describe(ds: LeRobotDataset) -> str:
    """A human-readable summary: size, features with shapes, tasks and per-feature stats."""
    lengths = ds.episodes.length
    lines = [
        f"dataset     {ds.root}",
        f"format      LeRobotDataset {ds.info['codebase_version']}, robot {ds.info.get('robot_type')}",
        f"episodes    {ds.num_episodes} ({len(ds)} frames at {ds.fps} fps,"
        f" {len(ds) / ds.fps:.1f} s; episode length {lengths.min()}-{lengths.max()}, mean {lengths.mean():.1f})",
        f"tasks       {len(ds.tasks)}",
    ]
    sources = {}
    for source in ds.episodes.sources:
        sources[source] = sources.get(source, 0) + 1
    if set(sources) != {fmt.DEFAULT_SOURCE}:
        lines.insert(3, "sources     " + ", ".join(f"{n} {name}" for name, n in sources.items()))
    lines += [f"  [{i}] {t}" for i, t in enumerate(ds.tasks[:20])]
    if len(ds.tasks) > 20:
        lines.append(f"  ... {len(ds.tasks) - 20} more")
    lines.append("features")
    for key, spec in ds.features.items():
        if key in fmt.DEFAULT_FEATURES:
            continue
        extra = ""
        if spec["dtype"] == "video":
            vinfo = spec.get("info") or {}
            extra = f" ({vinfo.get('video.codec', '?')}, {vinfo.get('video.pix_fmt', '?')})"
        names = spec.get("names")
        if spec["dtype"] not in fmt.VISUAL_DTYPES and names:
            extra = f" {list(names)}"
        lines.append(f"  {key:<34} {spec['dtype']:<8} {list(spec['shape'])}{extra}")
    lines.append("stats (mean / std / min / max per dimension)")
    with np.printoptions(precision=3, suppress=True, linewidth=200):
        for key, s in ds.stats.items():
            if key in fmt.DEFAULT_FEATURES or key not in ds.features:
                continue
            if ds.features[key]["dtype"] in fmt.VISUAL_DTYPES:
                lines.append(f"  {key}: mean {np.asarray(s['mean']).reshape(-1)} std {np.asarray(s['std']).reshape(-1)}")
                continue
            lines.append(f"  {key}:")
            for stat in ("mean", "std", "min", "max"):
                lines.append(f"    {stat:<4} {np.asarray(s[stat]).reshape(-1)}")
    return "\n".join(lines)


def verify(root: str | Path) -> list[str]:
    """Every problem found in the dataset, one line each; an empty list means it is sound.

    Loading checks metadata, parquet files, row indices, episode ranges, shapes and finiteness;
    then every camera is decoded from scratch (into a throwaway cache) and the stats file is
    checked against the features.
    """
    try:
        ds = LeRobotDataset(root)
    except DatasetError as err:
        return [str(err)]
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="robopolicy-verify-") as tmp:
        cache = FrameCache(ds, Path(tmp))
        for key in ds.camera_keys:
            try:
                frames = cache.get(key)
                if len(frames) != len(ds):
                    problems.append(f"camera {key!r}: decoded {len(frames)} frames for {len(ds)} rows")
            except DatasetError as err:
                problems.append(str(err))
    stats_path = ds.root / fmt.STATS_PATH
    if not stats_path.is_file():
        problems.append(f"missing file: {stats_path} (run `robopolicy dataset stats {ds.root} --write`)")
    else:
        try:
            stats = load_stats(stats_path, ds.features)
        except DatasetError as err:
            problems.append(str(err))
            stats = None
        for key, spec in (ds.features.items() if stats is not None else ()):
            if key in fmt.DEFAULT_FEATURES:
                continue
            if key not in stats:
                problems.append(f"{stats_path}: no statistics for feature {key!r}")
                continue
            for stat in ("mean", "std", "min", "max"):
                value = stats[key].get(stat)
                if value is None:
                    problems.append(f"{stats_path}: feature {key!r} has no {stat!r}")
                elif not np.isfinite(value).all():
                    problems.append(f"{stats_path}: feature {key!r} {stat} contains NaN/inf")
                elif spec["dtype"] not in fmt.VISUAL_DTYPES and value.size != int(np.prod(spec["shape"])):
                    problems.append(f"{stats_path}: feature {key!r} {stat} has {value.size} values,"
                                    f" feature shape is {spec['shape']}")
    return problems
