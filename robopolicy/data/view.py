"""`robopolicy dataset view`: one episode as a video — every camera side by side, the state and
action curves under them, and a cursor on the curves that marks the frame being shown.

The curves are drawn once (matplotlib) and only the cursor moves per frame, so an episode of a few
hundred frames renders in seconds. The result is an H.264 mp4 at the dataset's own fps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from robopolicy.data.dataset import LeRobotDataset
from robopolicy.errors import DatasetError

CAMERA_HEIGHT = 240
MIN_WIDTH = 640


def _resize(image: np.ndarray, height: int) -> np.ndarray:
    from PIL import Image

    h, w = image.shape[:2]
    width = max(2, round(w * height / h))
    return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))


def _curves(ds: LeRobotDataset, rows: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image of the state and action curves, x pixel of each frame on it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("observation.state", "observation.environment_state", "action") if k in ds.columns]
    t = np.arange(len(rows))
    dpi = 100
    fig, axes = plt.subplots(len(keys), 1, figsize=(width / dpi, 1.6 * len(keys)), dpi=dpi, sharex=True,
                             squeeze=False)
    for ax, key in zip(axes[:, 0], keys):
        values = ds.columns[key][rows].reshape(len(rows), -1)
        names = ds.features[key].get("names")
        names = names if isinstance(names, list) and len(names) == values.shape[1] else None
        for d in range(values.shape[1]):
            ax.plot(t, values[:, d], linewidth=1, label=str(names[d]) if names else None)
        ax.set_ylabel(key.removeprefix("observation."), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlim(0, max(len(rows) - 1, 1))
        if names and len(names) <= 10:
            ax.legend(fontsize=6, ncol=min(len(names), 5), loc="upper right")
    axes[-1, 0].set_xlabel("frame", fontsize=8)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    xs = axes[-1, 0].transData.transform(np.stack([t, np.zeros_like(t)], axis=1))[:, 0]
    plt.close(fig)
    return image, np.clip(np.round(xs).astype(int), 0, image.shape[1] - 1)


def render_episode(path: str | Path, episode: int, out: str | Path) -> Path:
    """Write episode `episode` of the dataset at `path` to the mp4 `out`; returns `out`."""
    from robopolicy.data.video import VideoEncoder

    ds = LeRobotDataset(path)
    if not 0 <= episode < ds.num_episodes:
        raise DatasetError(f"{ds.root}: --episode {episode} does not exist (the dataset has episodes 0-{ds.num_episodes - 1})")
    rows = np.arange(ds.episodes.from_index[episode], ds.episodes.to_index[episode])
    cameras = {k: ds.frames(k, rows) for k in ds.camera_keys}
    camera_width = sum(round(f.shape[2] * CAMERA_HEIGHT / f.shape[1]) for f in cameras.values())
    width = max(MIN_WIDTH, camera_width)
    width += width % 2
    curves, xs = _curves(ds, rows, width)
    curves = curves[:, :width] if curves.shape[1] >= width else np.pad(curves, ((0, 0), (0, width - curves.shape[1]), (0, 0)),
                                                                      constant_values=255)
    height = (CAMERA_HEIGHT if cameras else 0) + curves.shape[0]
    height += height % 2
    out = Path(out)
    encoder = VideoEncoder(out, fps=ds.fps, width=width, height=height, codec="h264", crf=23, gop=30)
    frame = np.full((height, width, 3), 255, dtype=np.uint8)  # one canvas, redrawn in place every frame
    try:
        for i in range(len(rows)):
            x = 0
            for frames in cameras.values():
                image = _resize(frames[i], CAMERA_HEIGHT)
                frame[:CAMERA_HEIGHT, x:x + image.shape[1]] = image[:, : width - x]
                x += image.shape[1]
            top = CAMERA_HEIGHT if cameras else 0
            panel = frame[top:top + curves.shape[0]]
            panel[:] = curves
            panel[:, max(xs[i] - 1, 0):xs[i] + 1] = (220, 30, 30)  # the cursor: this frame's time
            encoder.write(frame)
    finally:
        encoder.close()
    return out
