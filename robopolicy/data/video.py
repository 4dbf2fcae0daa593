"""Video decoding and encoding with PyAV (FFmpeg), the way LeRobot stores camera streams.

Decoding reads a whole file once, in order (the frame cache then keeps the pixels), which is far
cheaper than seeking per sample. Encoding streams frames straight into the container, several
episodes after one another in the same file, as LeRobot v3.0 does.
"""

from __future__ import annotations

import io

import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import av
import numpy as np

# SVT-AV1 prints a banner per file at its default log level; keep it to errors.
os.environ.setdefault("SVT_LOG", "1")

from robopolicy.errors import DatasetError

# Codec names accepted by `VideoEncoder`, mapped to the FFmpeg encoder that produces them.
ENCODERS = {"av1": "libsvtav1", "h264": "libx264"}


def iter_video_frames(path: Path) -> Iterator[tuple[float, np.ndarray]]:
    """Yield `(time_in_seconds, uint8 RGB frame (H, W, 3))` for every frame, in order.

    Streaming keeps memory flat however long the file is. Raises DatasetError naming the file
    if it is missing or cannot be decoded (a truncated download is the usual cause).
    """
    if not path.is_file():
        raise DatasetError(f"missing video file: {path}")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            for frame in container.decode(stream):
                t = float(frame.pts * stream.time_base) if frame.pts is not None else float("nan")
                yield t, frame.to_ndarray(format="rgb24")
    except (av.error.FFmpegError, IndexError) as err:
        raise DatasetError(f"cannot decode video {path}: {err}") from None


def decode_video(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """All frames of a file at once: `(frames (N, H, W, 3) uint8, times (N,) seconds)`."""
    times, frames = [], []
    for t, frame in iter_video_frames(path):
        times.append(t)
        frames.append(frame)
    if not frames:
        raise DatasetError(f"video {path} has no decodable frames")
    return np.stack(frames), np.asarray(times, dtype=np.float64)


def probe_video(path: Path) -> dict:
    """The `info` block LeRobot stores for a video feature in meta/info.json."""
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            ctx = stream.codec_context
            fps = stream.average_rate or stream.guessed_rate
            return {
                "video.height": ctx.height,
                "video.width": ctx.width,
                "video.codec": ctx.name if ctx.name != "libdav1d" else "av1",
                "video.pix_fmt": ctx.pix_fmt,
                "video.is_depth_map": False,
                "video.fps": int(round(float(fps))) if fps else None,
                "video.channels": 3,
                "has_audio": len(container.streams.audio) > 0,
            }
    except (av.error.FFmpegError, IndexError) as err:
        raise DatasetError(f"cannot read video {path}: {err}") from None


class VideoEncoder:
    """Appends RGB frames to one mp4 file; several episodes share a file.

    AV1 (SVT-AV1, yuv420p, a keyframe every 2 frames, crf 30) matches what LeRobot writes; H.264
    is there for players and tools without AV1 support. `frames_written / fps` is the timestamp at
    which the next episode starts inside this file.
    """

    def __init__(self, path: Path, fps: int, width: int, height: int, codec: str = "av1",
                 crf: int = 30, gop: int = 2):
        if codec not in ENCODERS:
            raise ValueError(f"unknown video codec {codec!r}; choose one of {sorted(ENCODERS)}")
        if width % 2 or height % 2:
            raise DatasetError(f"video frames must have even width and height for yuv420p, got {width}x{height}")
        self.path = path
        self.fps = fps
        self.frames_written = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(path), mode="w")
        options = {"crf": str(crf), "g": str(gop)}
        if codec == "av1":
            options["preset"] = "12"
        else:
            options["preset"] = "veryfast"
        self._stream = self._container.add_stream(ENCODERS[codec], rate=Fraction(fps), options=options)
        self._stream.width = width
        self._stream.height = height
        self._stream.pix_fmt = "yuv420p"

    def write(self, frame: np.ndarray) -> None:
        if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise DatasetError(f"video frames must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self._stream.encode(video_frame):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        self._container = None

    @property
    def size_bytes(self) -> int:
        return self.path.stat().st_size if self.path.exists() else 0


# ---------------------------------------------------------------------------- PNG frames
# Datasets may store camera frames as PNG bytes inside the parquet instead of mp4 (LeRobot's
# "image" dtype); these two functions are the whole codec for that case.
def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def decode_png(data: bytes, where: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as err:
        raise DatasetError(f"{where}: cannot decode image ({err})") from None
