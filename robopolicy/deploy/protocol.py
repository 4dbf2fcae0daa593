"""Wire format of the policy server: one binary websocket message per request or reply.

    [4-byte little-endian header length][UTF-8 JSON header][array bytes ...]

The header names each array's key, dtype, shape and byte offset, so images travel as raw bytes
(no base64, no pickle: decoding never executes anything) and the header stays human-readable.

Requests:  {"type": "hello", "token": ...}
           {"type": "predict", "token": ..., "id": n, "arrays": [...], "task": str, "steps": int|null,
            "seed": int|null, "prefix": bool}
Replies:   {"type": "hello", "spec": {...}}   {"type": "result", "id": n, "arrays": [...], "latency_ms": x}
           {"type": "error", "id": n, "message": str}
"""

from __future__ import annotations

import json
import math
import struct
from typing import Any

import numpy as np

ALLOWED_DTYPES = {"uint8", "float32", "float64", "int64", "int32", "bool"}
PROTOCOL_VERSION = 1
MAX_ARRAYS = 64


class ProtocolError(ValueError):
    """A message that does not follow the wire format."""


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> bytes:
    header = dict(header)
    blobs, meta, offset = [], [], 0
    for key, value in (arrays or {}).items():
        a = np.ascontiguousarray(value)
        if a.dtype.name not in ALLOWED_DTYPES:
            raise ProtocolError(f"array {key!r} has unsupported dtype {a.dtype}")
        meta.append({"key": key, "dtype": a.dtype.name, "shape": list(a.shape), "offset": offset, "nbytes": a.nbytes})
        blobs.append(a.tobytes())
        offset += a.nbytes
    header["arrays"] = meta
    header.setdefault("version", PROTOCOL_VERSION)
    head = json.dumps(header).encode()
    return struct.pack("<I", len(head)) + head + b"".join(blobs)


def decode(message: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    if not isinstance(message, (bytes, bytearray)) or len(message) < 4:
        raise ProtocolError("message too short or not binary")
    (n,) = struct.unpack("<I", message[:4])
    if n > len(message) - 4:
        raise ProtocolError("header length exceeds the message")
    try:
        header = json.loads(message[4:4 + n].decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ProtocolError(f"header is not JSON: {err}") from None
    except RecursionError:
        raise ProtocolError("header JSON is nested too deeply") from None
    if not isinstance(header, dict):
        raise ProtocolError("header must be a JSON object")
    items = header.get("arrays", [])
    if not isinstance(items, list) or len(items) > MAX_ARRAYS:
        raise ProtocolError(f"'arrays' must be a list of at most {MAX_ARRAYS} array descriptions")
    body = memoryview(message)[4 + n:]
    arrays = {}
    for item in items:
        try:
            key = item["key"]
            if not isinstance(key, str):
                raise ProtocolError(f"array key {key!r} is not a string")
            dtype = np.dtype(item["dtype"])
            if dtype.name not in ALLOWED_DTYPES:
                raise ProtocolError(f"array {key!r}: dtype {dtype} not allowed")
            shape = tuple(_dimension(s) for s in item["shape"])
            start, nbytes = int(item["offset"]), int(item["nbytes"])
        except (KeyError, TypeError, ValueError) as err:
            raise ProtocolError(f"bad array description {str(item)[:200]}: {err}") from None
        if len(shape) > 8 or nbytes != math.prod(shape) * dtype.itemsize or start < 0 or start + nbytes > len(body):
            raise ProtocolError(f"array {key!r}: size does not match its shape or the message")
        arrays[key] = np.frombuffer(body[start:start + nbytes], dtype=dtype).reshape(shape).copy()
    return header, arrays


def _dimension(value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"shape entries must be non-negative integers, got {value!r}")
    return value
