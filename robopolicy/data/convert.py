"""Convert robomimic HDF5 demonstrations to a LeRobotDataset v3.0 folder.

robomimic layout: `data/demo_N/obs/<key>` (T, ...), `data/demo_N/actions` (T, A), with the
environment name in `data.attrs["env_args"]`. Low-dim observation keys are concatenated into
`observation.state` and `observation.environment_state`; `<camera>_image` keys become
`observation.images.<name>`. Key lists are options because robomimic files differ by robot.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from robopolicy.data.writer import DatasetWriter
from robopolicy.errors import DatasetError

DEFAULT_STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
DEFAULT_ENV_STATE_KEYS = ("object",)
DEFAULT_CAMERAS = {"agentview_image": "agentview", "robot0_eye_in_hand_image": "wrist"}


def _demo_names(data) -> list[str]:
    names = [n for n in data.keys() if re.fullmatch(r"demo_\d+", n)]
    return sorted(names, key=lambda n: int(n.split("_")[1]))


def _concat(obs, keys: Sequence[str], where: str) -> np.ndarray:
    missing = [k for k in keys if k not in obs]
    if missing:
        raise DatasetError(f"{where}: observation keys {missing} not found; available: {sorted(obs.keys())}")
    parts = [np.asarray(obs[k], dtype=np.float32) for k in keys]
    parts = [p.reshape(p.shape[0], -1) for p in parts]
    return np.concatenate(parts, axis=1)


def convert_robomimic(hdf5_path: str | Path, out: str | Path, fps: int = 20, task: str | None = None,
                      state_keys: Sequence[str] = DEFAULT_STATE_KEYS,
                      env_state_keys: Sequence[str] = DEFAULT_ENV_STATE_KEYS,
                      cameras: Mapping[str, str] | None = None, camera_storage: str = "video",
                      video_codec: str = "av1", flip_images: bool = False, overwrite: bool = False,
                      max_episodes: int | None = None) -> Path:
    """Write `out` from the robomimic file; returns the dataset folder."""
    import h5py

    path = Path(hdf5_path)
    if not path.is_file():
        raise DatasetError(f"robomimic file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DatasetError(f"cannot open HDF5 file {path}: {err}") from None
    with f:
        if "data" not in f:
            raise DatasetError(f"{path}: no 'data' group; not a robomimic dataset")
        data = f["data"]
        demos = _demo_names(data)
        if not demos:
            raise DatasetError(f"{path}: 'data' holds no demo_N groups")
        if max_episodes is not None:
            demos = demos[:max_episodes]
        env_name = "robomimic"
        if "env_args" in data.attrs:
            try:
                env_name = json.loads(data.attrs["env_args"]).get("env_name", env_name)
            except (json.JSONDecodeError, TypeError):
                pass
        task = task or env_name
        first_obs = data[demos[0]]["obs"]
        cameras = dict(cameras) if cameras is not None else {k: v for k, v in DEFAULT_CAMERAS.items() if k in first_obs}
        env_state_keys = [k for k in env_state_keys if k in first_obs] if env_state_keys == DEFAULT_ENV_STATE_KEYS \
            else list(env_state_keys)

        state0 = _concat(first_obs, state_keys, f"{path}:{demos[0]}/obs")
        actions0 = np.asarray(data[demos[0]]["actions"])
        features: dict[str, dict] = {
            "observation.state": {"dtype": "float32", "shape": [state0.shape[1]],
                                  "names": _names(first_obs, state_keys)},
        }
        if env_state_keys:
            env0 = _concat(first_obs, env_state_keys, f"{path}:{demos[0]}/obs")
            features["observation.environment_state"] = {"dtype": "float32", "shape": [env0.shape[1]], "names": None}
        for src, name in cameras.items():
            if src not in first_obs:
                raise DatasetError(f"{path}:{demos[0]}/obs: camera {src!r} not found; available: {sorted(first_obs.keys())}")
            h, w, c = first_obs[src].shape[1:]
            features[f"observation.images.{name}"] = {"dtype": camera_storage, "shape": [h, w, c],
                                                     "names": ["height", "width", "channels"]}
        features["action"] = {"dtype": "float32", "shape": [actions0.shape[1]], "names": None}

        with DatasetWriter(out, fps=fps, features=features, robot_type=env_name, video_codec=video_codec,
                           overwrite=overwrite) as writer:
            for demo in demos:
                group = data[demo]
                where = f"{path}:{demo}"
                obs = group["obs"]
                actions = np.asarray(group["actions"], dtype=np.float32)
                state = _concat(obs, state_keys, f"{where}/obs")
                env_state = _concat(obs, env_state_keys, f"{where}/obs") if env_state_keys else None
                images = {name: np.asarray(obs[src]) for src, name in cameras.items()}
                if len(state) != len(actions):
                    raise DatasetError(f"{where}: {len(state)} observations but {len(actions)} actions")
                if not np.isfinite(actions).all():
                    t = int(np.flatnonzero(~np.isfinite(actions).all(axis=1))[0])
                    raise DatasetError(f"{where}/actions: non-finite value (NaN/inf) at step {t}")
                for t in range(len(actions)):
                    frame = {"observation.state": state[t], "action": actions[t]}
                    if env_state is not None:
                        frame["observation.environment_state"] = env_state[t]
                    for name, frames in images.items():
                        img = frames[t]
                        frame[f"observation.images.{name}"] = img[::-1] if flip_images else img
                    writer.add_frame(frame, task=task)
                writer.save_episode()
    return Path(out)


def _names(obs, keys: Sequence[str]) -> list[str]:
    names = []
    for k in keys:
        size = int(np.prod(obs[k].shape[1:]))
        names += [f"{k}_{i}" for i in range(size)] if size > 1 else [k]
    return names
