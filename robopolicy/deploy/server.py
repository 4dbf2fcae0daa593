"""`robopolicy serve`: run a policy on a GPU machine, serve chunks to a robot computer.

A websocket server (the `websockets` library) speaking the binary format of `protocol.py`.
Every message must carry the shared token (compared in constant time); a connection that sends a
wrong token is closed with code 4001. Messages above `max_message_bytes` are refused by the
websocket layer (close code 1009) before they are read into memory. Inference runs one request
at a time under a lock; other connections wait, they are never interleaved inside the model.
"""

from __future__ import annotations

import hmac
import logging
import secrets
import threading
import time
from pathlib import Path

import numpy as np
import torch

from robopolicy.deploy.protocol import ProtocolError, decode, encode
from robopolicy.errors import RobopolicyError

log = logging.getLogger("robopolicy.serve")
TOKEN_ENV = "ROBOPOLICY_TOKEN"
AUTH_FAILED = 4001


def policy_spec(policy) -> dict:
    """What a client needs to know to talk to this policy."""
    cfg = policy.config
    return {"head": cfg.head, "n_obs_steps": cfg.n_obs_steps, "horizon": cfg.horizon, "chunk_start": policy.chunk_start,
            "n_action_steps": cfg.n_action_steps, "observation_keys": policy.observation_keys,
            "shapes": {f.key: f.shape for f in policy.spec.features}, "fps": policy.spec.fps,
            "tasks": policy.spec.tasks, "action_stats": (policy.stats or {}).get("action")}


class PolicyServer:
    def __init__(self, policy, token: str, host: str = "127.0.0.1", port: int = 8765,
                 max_message_bytes: int = 16 * 1024 * 1024):
        if not token:
            raise RobopolicyError("the policy server needs a shared token (--token or $ROBOPOLICY_TOKEN)")
        self.policy = policy.eval()
        self.token = token
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self._lock = threading.Lock()
        self._server = None
        self.requests = 0

    def _authorized(self, header: dict) -> bool:
        return hmac.compare_digest(str(header.get("token", "")).encode(), self.token.encode())

    def _handle(self, ws) -> None:
        for message in ws:
            try:
                header, arrays = decode(message)
            except ProtocolError as err:
                ws.send(encode({"type": "error", "id": None, "message": f"bad message: {err}"}))
                continue
            if not self._authorized(header):
                log.warning("refused a request with a wrong token from %s", ws.remote_address)
                ws.close(code=AUTH_FAILED, reason="wrong token")
                return
            kind = header.get("type")
            if kind == "hello":
                ws.send(encode({"type": "hello", "spec": policy_spec(self.policy)}))
            elif kind == "predict":
                ws.send(self._predict(header, arrays))
            else:
                ws.send(encode({"type": "error", "id": header.get("id"), "message": f"unknown request type {kind!r}"}))

    def _predict(self, header: dict, arrays: dict) -> bytes:
        rid = header.get("id")
        try:
            observation = {k: v for k, v in arrays.items() if k != "prefix"}
            observation["task"] = header.get("task") or ""
            generator = torch.Generator().manual_seed(int(header["seed"])) if header.get("seed") is not None else None
            start = time.perf_counter()
            with self._lock:
                chunk = self.policy.predict_chunk(observation, steps=header.get("steps"),
                                                  prefix=arrays.get("prefix"), generator=generator)
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


def new_token() -> str:
    return secrets.token_urlsafe(24)


def load_server_policy(checkpoint: str | Path, device: str = "auto"):
    from robopolicy.policy.policy import Policy

    return Policy.load(checkpoint, device=device)
