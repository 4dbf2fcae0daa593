"""A LeRobot policy as a robopolicy chunk executor, so robopolicy's episode runner can score it.

robopolicy's evaluation (`robopolicy.evaluate.rollout.run_episode`) drives an env with an object that
has `reset(seed)`, `act(observation) -> action` and `inferences`. `LeRobotExecutor` is that object
for a LeRobot checkpoint: the policy itself runs in the LeRobot environment
(`lerobot_policy_worker.py`, started here with that environment's Python), and every step this
side sends the observation and gets back what LeRobot's `select_action` chose, after LeRobot's own
saved pre- and post-processors. So the two toolkits' policies meet the same env, the same seeds and
the same step limit, and only the policy differs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np

WORKER = Path(__file__).with_name("lerobot_policy_worker.py")


def pack(value) -> tuple:
    """An array as (dtype, shape, bytes): what crosses between the two numpy major versions."""
    array = np.ascontiguousarray(value)
    return str(array.dtype), tuple(array.shape), array.tobytes()


def unpack(packed: tuple) -> np.ndarray:
    dtype, shape, data = packed
    return np.frombuffer(data, dtype=np.dtype(dtype)).reshape(shape)


class LeRobotExecutor:
    """One LeRobot policy in its own process, answering one step at a time."""

    def __init__(self, checkpoint: str | Path, python: str | Path, overrides: dict | None = None):
        """`overrides`: inference fields of the policy's config set before it is built
        (e.g. n_action_steps, temporal_ensemble_coeff)."""
        ours, theirs = socket.socketpair()  # private to the two processes: no address, no key
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        self._process = subprocess.Popen([str(python), str(WORKER), str(checkpoint), str(theirs.fileno()),
                                          json.dumps(overrides or {})],
                                         env=env, pass_fds=[theirs.fileno()])
        theirs.close()
        self._connection = Connection(ours.detach())
        try:
            kind, self.input_features = self._connection.recv()
        except EOFError:
            raise RuntimeError(f"the LeRobot policy worker for {checkpoint} exited while loading"
                               f" (exit code {self._process.wait()})") from None
        assert kind == "ready"
        self.inferences = 0

    def reset(self, seed: int | None = None) -> None:
        self.inferences = 0
        self._connection.send(("reset",))
        self._connection.recv()

    def act(self, observation: dict) -> np.ndarray:
        packed = {k: pack(v) for k, v in observation.items() if k in self.input_features}
        self._connection.send(("act", packed))
        reply = self._connection.recv()
        if reply[0] != "action":
            raise RuntimeError(f"LeRobot policy worker: {reply[1]}")
        self.inferences += int(reply[2])
        return unpack(reply[1]).copy()

    def close(self) -> None:
        self._connection.close()  # the worker sees EOF and exits
        try:
            self._process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._process.kill()
