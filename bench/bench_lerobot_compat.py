"""Does LeRobot's own loader read the datasets robopolicy's edit verbs write?

  python bench/bench_lerobot_compat.py --lerobot-python /tmp/lerobot/bin/python

Writes, from the LeRobot-written Lift fixture (20 episodes, 2 AV1 cameras), the outputs of
`robopolicy dataset filter`, `delete-episodes`, `split` and `merge` into a temporary folder, then
runs this same file under LeRobot 0.4.4's Python (`--read`, the separate environment of
`bench/bench_lerobot.py`; set up with the repository's LeRobot venv script) to open each with
`lerobot.datasets.lerobot_dataset.LeRobotDataset`, check its episode and frame counts, and read
the first and last frame of every episode (video frames decoded by LeRobot). Records
bench/results/lerobot_reads_edits.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_edits(root: Path) -> dict[str, dict]:
    """The edit verbs' outputs from the fixture: {name: {path, episodes, frames}}."""
    sys.path.insert(0, str(HERE.parent / "tests"))
    from robopolicy.data.dataset import LeRobotDataset
    from robopolicy.data.edit import split_episodes, write_episodes

    from conftest import LIFT_VIDEO

    src = LeRobotDataset(LIFT_VIDEO)
    train, val = split_episodes(src.num_episodes, [0.8, 0.2], seed=0)
    outputs = {
        "filter": [(src, [0, 3, 4, 5, 11])],
        "delete-episodes": [(src, [e for e in range(src.num_episodes) if e not in (1, 2)])],
        "split-train": [(src, train)],
        "split-val": [(src, val)],
    }
    made = {name: write_episodes(parts, root / name) for name, parts in outputs.items()}
    made["merge"] = write_episodes([(LeRobotDataset(made["split-val"]), list(range(len(val)))),
                                    (LeRobotDataset(made["filter"]), list(range(5)))], root / "merge")
    out = {}
    for name, path in made.items():
        ds = LeRobotDataset(path)
        out[name] = {"path": str(path), "episodes": ds.num_episodes, "frames": len(ds)}
    return out


def read_with_lerobot(paths: list[str]) -> dict[str, dict]:
    """(Under LeRobot's Python) open each dataset and read the ends of every episode."""
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    out = {}
    for path in paths:
        try:
            ds = LeRobotDataset(repo_id=f"local/{Path(path).name}", root=path)
            ends = []
            for e in range(ds.meta.total_episodes):
                start = ds.meta.episodes["dataset_from_index"][e]
                stop = ds.meta.episodes["dataset_to_index"][e]
                for row in (start, stop - 1):
                    item = ds[int(row)]
                    assert int(item["episode_index"]) == e
                    ends.append(tuple(item[k].shape for k in ds.meta.camera_keys))
            out[path] = {"ok": True, "episodes": ds.meta.total_episodes, "frames": ds.meta.total_frames,
                         "frames_read": len(ends), "camera_shapes": [list(s) for s in ends[0]] if ends else []}
        except Exception as err:  # noqa: BLE001 - reported, not raised: the record says what failed
            out[path] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:500]}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lerobot-python", default="/tmp/lerobot/bin/python")
    parser.add_argument("--read", nargs="*", help=argparse.SUPPRESS)  # the half that runs under LeRobot
    args = parser.parse_args()
    if args.read is not None:
        print(json.dumps(read_with_lerobot(args.read)))
        return
    from benchlib import machine

    with tempfile.TemporaryDirectory() as tmp:
        ours = write_edits(Path(tmp))
        done = subprocess.run([args.lerobot_python, __file__, "--read", *(v["path"] for v in ours.values())],
                              capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
        if done.returncode != 0:
            raise SystemExit(f"LeRobot's side failed:\n{done.stderr[-3000:]}")
        theirs = json.loads(done.stdout.strip().splitlines()[-1])
    rows = {}
    for name, mine in ours.items():
        seen = theirs[mine["path"]]
        rows[name] = {"robopolicy": {k: mine[k] for k in ("episodes", "frames")},
                      "lerobot": {k: v for k, v in seen.items()},
                      "agree": bool(seen.get("ok")) and seen["episodes"] == mine["episodes"]
                      and seen["frames"] == mine["frames"]}
        print(f"{name:16s} robopolicy {mine['episodes']:3d} episodes {mine['frames']:5d} frames | LeRobot:"
              f" {'reads it' if rows[name]['agree'] else seen}")
    record = {"datasets": rows, "all_agree": all(r["agree"] for r in rows.values()), "machine": machine(),
              "lerobot": "0.4.4", "command": "python bench/bench_lerobot_compat.py --lerobot-python /tmp/lerobot/bin/python"}
    (HERE / "results" / "lerobot_reads_edits.json").write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
