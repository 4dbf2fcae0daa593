"""PolicyClient: a remote policy with the same inference interface as a local `Policy`.

The deployment runtime cannot tell them apart: `predict_chunk`, `spec` (the server policy's
`PolicySpec`, rebuilt), `config`, `chunk_start`, `observation_keys` and `supports_prefix` all work. Each request has a timeout; on a dropped connection the client
reconnects with exponential backoff and retries the request (inference is side-effect free, so
a retry is safe), up to `retries` times, then raises `PolicyServerError`.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Mapping

import numpy as np

from robopolicy.deploy.protocol import decode, encode
from robopolicy.errors import ConfigError, RobopolicyError
from robopolicy.policy.config import PolicySpec
from robopolicy.structs import from_dict


class PolicyServerError(RobopolicyError):
    """The policy server could not be reached, refused us, or failed a request."""


class PolicyClient:
    def __init__(self, url: str, token: str, timeout_s: float = 2.0, retries: int = 3, backoff_s: float = 0.2,
                 max_message_bytes: int = 16 * 1024 * 1024):
        self.url = url
        self.token = token
        self.timeout_s = timeout_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.max_message_bytes = max_message_bytes
        self._ws = None
        self._ids = itertools.count()
        self.reconnects = 0
        hello = self._request({"type": "hello"})[0]["spec"]
        try:  # the server's PolicySpec, rebuilt: a remote policy answers every question a local one does
            self.spec = from_dict(PolicySpec, hello["policy_spec"])
        except (KeyError, TypeError, ConfigError) as err:
            raise PolicyServerError(f"{url}: the server's policy description is not one this client reads ({err})") from None
        self.config = self.spec.config
        self.chunk_start = int(hello["chunk_start"])
        self.supports_prefix = bool(hello["supports_prefix"])
        self.observation_keys = self.spec.keys("state") + self.spec.keys("camera")
        self.stats = {"action": hello["action_stats"]} if hello.get("action_stats") else None

    # ------------------------------------------------------------------ Policy interface
    def predict_chunk(self, observation: Mapping[str, Any], steps: int | None = None, prefix: np.ndarray | None = None,
                      generator=None) -> np.ndarray:
        arrays = {k: np.asarray(observation[k]) for k in self.observation_keys}
        if prefix is not None:
            arrays["prefix"] = np.asarray(prefix, dtype=np.float32)
        seed = int(generator.initial_seed()) + next(self._ids) if generator is not None else None
        header = {"type": "predict", "task": observation.get("task") or "", "steps": steps, "seed": seed}
        reply, out = self._request(header, arrays)
        return out["actions"]

    # ------------------------------------------------------------------ transport
    def _connect(self) -> None:
        from websockets.sync.client import connect

        try:
            self._ws = connect(self.url, open_timeout=self.timeout_s, max_size=self.max_message_bytes,
                               compression=None)
        except (OSError, TimeoutError) as err:
            raise ConnectionError(f"cannot connect to {self.url}: {err}") from err

    def _request(self, header: dict, arrays: dict | None = None) -> tuple[dict, dict]:
        from websockets.exceptions import ConnectionClosed

        header = {**header, "token": self.token, "id": next(self._ids)}
        message = encode(header, arrays)
        last_error: Exception | None = None
        for attempt in range(self.retries + 1):
            try:
                if self._ws is None:
                    self._connect()
                    if attempt:
                        self.reconnects += 1
                self._ws.send(message)
                reply, out = decode(self._ws.recv(timeout=self.timeout_s))
                if reply.get("type") == "error":
                    raise PolicyServerError(f"policy server error: {reply.get('message')}")
                return reply, out
            except ConnectionClosed as err:
                self._close()
                if err.rcvd is not None and err.rcvd.code == 4001:
                    raise PolicyServerError(f"{self.url} refused the token") from None
                if err.rcvd is not None and err.rcvd.code == 1009:
                    raise PolicyServerError(f"request of {len(message)} bytes exceeds the server's message limit") from None
                last_error = err
            except (ConnectionError, TimeoutError, OSError) as err:
                self._close()
                last_error = err
            time.sleep(self.backoff_s * (2 ** attempt))
        raise PolicyServerError(f"policy server {self.url} unreachable after {self.retries + 1} attempts:"
                                f" {type(last_error).__name__}: {last_error}")

    def _close(self) -> None:
        if self._ws is not None:
            try:
                self._ws.close()
            except Exception:
                pass
            self._ws = None

    def close(self) -> None:
        self._close()
