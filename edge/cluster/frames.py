"""The wire format: typed frames of raw numpy buffers, never pickle.

A message is one ZeroMQ multipart message: frame 0 is a JSON header, frames 1..n are the raw
bytes of n numpy arrays (C order, little-endian), sent without copying and received as
read-only `np.frombuffer` views of the frames.

    header = {"v": 1, "type": "step", "id": 7, "meta": {"position": 12},
              "buffers": [["float32", [1, 1, 576]]]}

Everything a peer sends is checked before use: the header's size and shape (JSON of known
keys and types, bounded depth), the message type against what the receiver accepts, each
buffer's dtype against a short allow-list, its shape (non-negative, at most `MAX_NDIM` axes)
and its byte length against the header (a truncated or padded buffer is refused), and the
whole message against the receiver's byte limit. A message that fails raises `ProtocolError`;
nothing in it is interpreted beyond that.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.cluster.errors import ProtocolError

VERSION = 1
MAX_HEADER_BYTES = 16 << 10
MAX_BUFFERS = 8
MAX_NDIM = 4
MAX_DEPTH = 8  # nesting of the header's JSON
# Little-endian on the wire whatever the host; these are all an LLM step exchanges.
DTYPES: Mapping[str, np.dtype] = {
    "float32": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int64": np.dtype("<i8"),
    "int32": np.dtype("<i4"),
}
_WIRE_NAMES = {dtype.str: name for name, dtype in DTYPES.items()}
MetaValue = Any  # JSON: str, int, float, bool, None, lists and dicts of them


@dataclass(frozen=True)
class Message:
    """A typed message: `type` names what it is, `id` pairs a reply with its request."""

    type: str
    id: int = 0
    meta: Mapping[str, MetaValue] = field(default_factory=dict)
    buffers: tuple[np.ndarray, ...] = ()

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.buffers)


def encode(message: Message) -> list[bytes | memoryview]:
    """Frames for `message`: the header, then each buffer's bytes (no copy when the array is
    already C-contiguous little-endian of an allowed dtype)."""
    if len(message.buffers) > MAX_BUFFERS:
        raise ProtocolError(f"{len(message.buffers)} buffers; at most {MAX_BUFFERS} per message")
    specs = []
    frames: list[bytes | memoryview] = []
    for array in message.buffers:
        name = _WIRE_NAMES.get(array.dtype.newbyteorder("<").str)
        if name is None or array.ndim > MAX_NDIM:
            raise ProtocolError(
                f"cannot send a {array.dtype} array of {array.ndim} axes "
                f"(allowed: {sorted(DTYPES)}, at most {MAX_NDIM} axes)"
            )
        wire = np.ascontiguousarray(array, dtype=DTYPES[name])
        specs.append([name, list(wire.shape)])
        frames.append(memoryview(wire).cast("B"))
    header = {
        "v": VERSION,
        "type": message.type,
        "id": message.id,
        "meta": dict(message.meta),
        "buffers": specs,
    }
    raw = _ENCODER.encode(header).encode()
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"header of {len(raw)} bytes; at most {MAX_HEADER_BYTES}")
    return [raw, *frames]


def decode(
    frames: Sequence[bytes | memoryview],
    *,
    max_bytes: int,
    types: Collection[str] | None = None,
) -> Message:
    """The message in `frames`, every field checked; `ProtocolError` says what is wrong.

    Buffers are read-only views of the frames (valid as long as the frames are alive)."""
    if not frames:
        raise ProtocolError("an empty message")
    total = sum(memoryview(f).nbytes for f in frames)
    if total > max_bytes:
        raise ProtocolError(f"a message of {total} bytes; this peer accepts at most {max_bytes}")
    raw = memoryview(frames[0]).tobytes()
    if len(raw) > MAX_HEADER_BYTES:
        raise ProtocolError(f"a header of {len(raw)} bytes; at most {MAX_HEADER_BYTES}")
    try:
        header = _DECODER.decode(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError(f"the header is not valid JSON: {str(exc)[:100]}") from None
    kind, ident, meta, specs = _check_header(header)
    if types is not None and kind not in types:
        raise ProtocolError(
            f"unexpected message type {kind[:40]!r}; expected one of {sorted(types)}"
        )
    if len(specs) != len(frames) - 1:
        raise ProtocolError(
            f"the header announces {len(specs)} buffers but {len(frames) - 1} frames follow"
        )
    buffers = []
    for i, (spec, frame) in enumerate(zip(specs, frames[1:])):
        dtype, shape = _check_spec(i, spec)
        expected = math.prod(shape) * dtype.itemsize
        view = memoryview(frame)
        if view.nbytes != expected:
            raise ProtocolError(
                f"buffer {i}: {view.nbytes} bytes, but {dtype.name}{list(shape)} needs {expected}"
            )
        buffers.append(np.frombuffer(view, dtype).reshape(shape))
    return Message(kind, ident, meta, tuple(buffers))


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


# Built once: json.dumps/loads with options build a new coder per call (~10 us each way, on
# every message of a tensor-parallel reduction).
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def _check_header(header: object) -> tuple[str, int, dict, list]:
    if not isinstance(header, dict) or set(header) != {"v", "type", "id", "meta", "buffers"}:
        raise ProtocolError("the header must be an object with keys v, type, id, meta, buffers")
    if header["v"] != VERSION:
        raise ProtocolError(f"wire version {header['v']!r:.20}; this peer speaks {VERSION}")
    kind, ident, meta, specs = header["type"], header["id"], header["meta"], header["buffers"]
    if not isinstance(kind, str) or not 0 < len(kind) <= 32:
        raise ProtocolError("the message type must be a short string")
    if isinstance(ident, bool) or not isinstance(ident, int) or not 0 <= ident < 2**63:
        raise ProtocolError("the message id must be a non-negative 64-bit integer")
    if not isinstance(meta, dict) or _depth(meta) > MAX_DEPTH:
        raise ProtocolError(f"meta must be an object nested at most {MAX_DEPTH} deep")
    if not isinstance(specs, list) or len(specs) > MAX_BUFFERS:
        raise ProtocolError(f"buffers must be a list of at most {MAX_BUFFERS} [dtype, shape]")
    return kind, ident, meta, specs


def _check_spec(i: int, spec: object) -> tuple[np.dtype, tuple[int, ...]]:
    if not (isinstance(spec, list) and len(spec) == 2 and isinstance(spec[1], list)):
        raise ProtocolError(f"buffer {i}: the spec must be [dtype, shape]")
    name, shape = spec
    if not isinstance(name, str) or name not in DTYPES:
        raise ProtocolError(f"buffer {i}: dtype {name!r:.20} not in {sorted(DTYPES)}")
    if len(shape) > MAX_NDIM or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape
    ):
        raise ProtocolError(
            f"buffer {i}: the shape must be at most {MAX_NDIM} non-negative integers"
        )
    return DTYPES[name], tuple(shape)


def _depth(value: object, level: int = 0) -> int:
    if level > MAX_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level + 1)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level + 1)
    return level


def error_message(request_id: int, kind: str, text: str) -> Message:
    """The reply a peer sends instead of an answer: the error's class name and message."""
    return Message("error", request_id, {"kind": kind[:64], "message": text[:2000]})
