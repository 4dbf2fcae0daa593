"""`robopolicy dataset view`: an episode of the LeRobot-written fixture as an mp4."""

import subprocess
import sys

import av
import numpy as np
import pytest

from conftest import LIFT_VIDEO
from robopolicy.data.dataset import LeRobotDataset
from robopolicy.data.view import CAMERA_HEIGHT, _resize


def _red_column(frame: np.ndarray) -> int:
    """x of the cursor: the column with most pure-red pixels below the cameras."""
    panel = frame[CAMERA_HEIGHT + 10:].astype(int)
    red = (panel[..., 0] > 180) & (panel[..., 1] < 90) & (panel[..., 2] < 90)
    return int(red.sum(axis=0).argmax())


def test_view_shows_every_camera_and_a_cursor_that_follows_the_frames(tmp_path):
    out = tmp_path / "episode.mp4"
    run = subprocess.run([sys.executable, "-m", "robopolicy.cli", "dataset", "view", str(LIFT_VIDEO),
                          "--episode", "1", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ds = LeRobotDataset(LIFT_VIDEO)
    rows = np.arange(ds.episodes.from_index[1], ds.episodes.to_index[1])
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and int(stream.average_rate) == ds.fps
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == len(rows)
    x = 0
    for key in ds.camera_keys:  # each camera, time-aligned, at the top (H.264 keeps it close)
        expected = _resize(ds.frames(key, rows[[10]])[0], CAMERA_HEIGHT)
        shown = frames[10][:CAMERA_HEIGHT, x:x + expected.shape[1]]
        assert np.abs(shown.astype(int) - expected.astype(int)).mean() < 8
        x += expected.shape[1]
    cursor = [_red_column(f) for f in frames[::10]]
    assert all(b > a for a, b in zip(cursor, cursor[1:]))  # the cursor walks along the curves


@pytest.mark.parametrize("args, message", [
    (["--episode", "999"], "--episode 999 does not exist"),
    (["--episode", "0", "--out", "x.gif"], "mp4"),
])
def test_view_bad_input_is_one_line_exit_2(tmp_path, args, message):
    run = subprocess.run([sys.executable, "-m", "robopolicy.cli", "dataset", "view", str(LIFT_VIDEO), *args],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 2 and message in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
