"""`robopolicy serve`: run a policy on a GPU machine, serve chunks to a robot computer.

A websocket server (the `websockets` library) speaking the binary format of `protocol.py`.
Every message must carry the shared token (compared in constant time). Nothing reaches an
unauthenticated client but the door: its first message must arrive within `auth_timeout_s` and
carry the token, otherwise the connection is closed (4001) without an error dialogue. Concurrent
connections are capped in total and per address (close code 1013, "try again later"), so idle
sockets cannot pile up threads. Messages above `max_message_bytes` are refused by the websocket
layer (close code 1009) before they are read into memory; a request may not ask for more
denoising steps than `max_steps` (default: the policy's own setting), so no request can hold the
model for long. Malformed requests get an error reply, non-finite observations and non-finite
chunks are refused, and a client that vanishes mid-request costs one log line. Inference runs one
request at a time under a lock; other connections wait, they are never interleaved inside the
model.
"""

from __future__ import annotations

import hmac
import logging
from collections import Counter
import secrets
import threading
import time
from pathlib import Path

import numpy as np
import torch

from robopolicy.deploy.names import TOKEN_ENV
from robopolicy.deploy.protocol import ProtocolError, decode, encode
from robopolicy.errors import RobopolicyError
from robopolicy.structs import to_dict

log = logging.getLogger("robopolicy.serve")
AUTH_FAILED = 4001
TRY_AGAIN_LATER = 1013


def policy_spec(policy) -> dict:
    """What a client needs to know to talk to this policy: its `PolicySpec` (as in config.json),
    the action statistics safety bounds are made from, and what the policy supports."""
    return {"policy_spec": to_dict(policy.spec), "chunk_start": policy.chunk_start,
            "supports_prefix": policy.supports_prefix, "action_stats": (policy.stats or {}).get("action")}


def default_max_steps(policy) -> int:
    """The most denoising steps a request may ask for: the policy's own setting."""
    cfg = policy.config
    return {"diffusion": cfg.diffusion.num_inference_steps, "flow": cfg.flow.num_inference_steps}.get(cfg.head, 1)


class PolicyServer:
    def __init__(self, policy, token: str, host: str = "127.0.0.1", port: int = 8765,
                 max_message_bytes: int = 16 * 1024 * 1024, max_steps: int | None = None,
                 auth_timeout_s: float = 5.0, max_connections: int = 64, max_connections_per_address: int = 8):
        if not token:
            raise RobopolicyError(f"the policy server needs a shared token (--token or ${TOKEN_ENV})")
        self.policy = policy.eval()
        self.token = token
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self.max_steps = max_steps or default_max_steps(policy)
        if self.max_steps < 1:
            raise RobopolicyError(f"--max-steps must be >= 1, got {self.max_steps}")
        self.auth_timeout_s = auth_timeout_s
        self.max_connections = max_connections
        self.max_connections_per_address = max_connections_per_address
        self._lock = threading.Lock()
        self._connections_lock = threading.Lock()
        self._connections: Counter = Counter()  # remote host -> open connections
        self._server = None
        self.requests = 0

    def _authorized(self, header: dict) -> bool:
        return hmac.compare_digest(str(header.get("token", "")).encode(), self.token.encode())

    def _admit(self, host: str) -> bool:
        with self._connections_lock:
            if sum(self._connections.values()) >= self.max_connections \
                    or self._connections[host] >= self.max_connections_per_address:
                return False
            self._connections[host] += 1
            return True

    def _leave(self, host: str) -> None:
        with self._connections_lock:
            self._connections[host] -= 1
            if self._connections[host] <= 0:
                del self._connections[host]

    def _handle(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        host = str((ws.remote_address or ("?",))[0])
        if not self._admit(host):
            log.warning("refused a connection from %s: too many open connections", host)
            ws.close(code=TRY_AGAIN_LATER, reason="too many connections")
            return
        try:
            self._serve_connection(ws)
        except ConnectionClosed:
            log.info("client %s disconnected", host)
        except TimeoutError:
            log.warning("closed a connection from %s that did not authenticate in %.0f s", host, self.auth_timeout_s)
            ws.close(code=AUTH_FAILED, reason="authentication timeout")
        finally:
            self._leave(host)

    def _serve_connection(self, ws) -> None:
        authenticated = False
        while True:
            message = ws.recv(timeout=None if authenticated else self.auth_timeout_s)
            try:
                header, arrays = decode(message)
            except ProtocolError as err:
                if not authenticated:  # strangers get no dialogue
                    ws.close(code=AUTH_FAILED, reason="not authenticated")
                    return
                ws.send(encode({"type": "error", "id": None, "message": f"bad message: {err}"}))
                continue
            if not self._authorized(header):
                log.warning("refused a request with a wrong token from %s", ws.remote_address)
                ws.close(code=AUTH_FAILED, reason="wrong token")
                return
            authenticated = True
            kind = header.get("type")
            if kind == "hello":
                ws.send(encode({"type": "hello", "spec": policy_spec(self.policy), "max_steps": self.max_steps}))
            elif kind == "predict":
                ws.send(self._predict(header, arrays))
            else:
                ws.send(encode({"type": "error", "id": _request_id(header),
                                "message": f"unknown request type {str(kind)[:40]!r}"}))

    def _predict(self, header: dict, arrays: dict) -> bytes:
        rid = _request_id(header)
        try:
            steps, seed, task = header.get("steps"), header.get("seed"), header.get("task") or ""
            if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool)
                                      or not 1 <= steps <= self.max_steps):
                raise ValueError(f"steps must be an integer in [1, {self.max_steps}] (the server's limit), got {steps!r}")
            if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2 ** 63):
                raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
            if not isinstance(task, str):
                raise ValueError(f"task must be a string, got {type(task).__name__}")
            for key, value in arrays.items():
                if value.dtype.kind == "f" and not np.isfinite(value).all():
                    raise ValueError(f"observation {key!r} contains NaN or inf")
            observation = {k: v for k, v in arrays.items() if k != "prefix"}
            observation["task"] = task
            generator = torch.Generator().manual_seed(seed) if seed is not None else None
            start = time.perf_counter()
            with self._lock:
                chunk = self.policy.predict_chunk(observation, steps=steps, prefix=arrays.get("prefix"),
                                                  generator=generator)
            if not np.isfinite(chunk).all():
                raise ValueError("the policy produced a non-finite chunk; it is not sent")
            self.requests += 1
            return encode({"type": "result", "id": rid, "latency_ms": (time.perf_counter() - start) * 1000},
                          {"actions": chunk.astype(np.float32)})
        except Exception as err:  # report to the client; the server keeps serving
            return encode({"type": "error", "id": rid, "message": f"{type(err).__name__}: {err}"})

    def start(self) -> "PolicyServer":
        """Serve in a background thread (returns once the socket is listening)."""
        from websockets.sync.server import serve

        self._server = serve(self._handle, self.host, self.port, max_size=self.max_message_bytes,
                             compression=None)
        self.port = self._server.socket.getsockname()[1]
        threading.Thread(target=self._server.serve_forever, daemon=True, name="robopolicy-serve").start()
        return self

    def serve_forever(self) -> None:
        from websockets.sync.server import serve

        with serve(self._handle, self.host, self.port, max_size=self.max_message_bytes, compression=None) as server:
            self._server = server
            server.serve_forever()

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None


def _request_id(header: dict):
    rid = header.get("id")
    return rid if isinstance(rid, int) and not isinstance(rid, bool) else None


def new_token() -> str:
    return secrets.token_urlsafe(24)


def load_server_policy(checkpoint: str | Path, device: str = "auto"):
    from robopolicy.policy.policy import Policy

    return Policy.load(checkpoint, device=device)
