"""The wire format alone: round trips without copies, and every malformed header refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.cluster.errors import ProtocolError
from edge.cluster.frames import MAX_BUFFERS, Message, decode, encode


def test_round_trip_keeps_types_shapes_and_values() -> None:
    hidden = np.random.default_rng(0).standard_normal((1, 3, 576), dtype=np.float32)
    ids = np.array([[1, 2, 3]], np.int64)
    frames = encode(Message("step", 7, {"position": 12, "logits": "last"}, (hidden, ids)))
    assert frames[1].obj is hidden  # sent in place, no copy
    got = decode([bytes(f) for f in frames], max_bytes=1 << 20, types={"step"})
    assert (got.type, got.id, got.meta["position"]) == ("step", 7, 12)
    np.testing.assert_array_equal(got.buffers[0], hidden)
    np.testing.assert_array_equal(got.buffers[1], ids)
    assert not got.buffers[0].flags.writeable  # a view of the received frame


def test_big_endian_and_strided_arrays_go_out_little_endian() -> None:
    a = np.arange(12, dtype=">f4").reshape(3, 4)[:, ::2]
    got = decode([bytes(f) for f in encode(Message("x", buffers=(a,)))], max_bytes=1 << 20)
    np.testing.assert_array_equal(got.buffers[0], a)


def _h(**fields: object) -> dict:
    return {"v": 1, "type": "x", "id": 0, "meta": {}, "buffers": [], **fields}


TOO_MANY = [["int64", [1]]] * (MAX_BUFFERS + 1)


@pytest.mark.parametrize(
    ("header", "data", "match"),
    [
        ({"v": 2}, [], "keys"),
        (_h(v=2), [], "version"),
        (_h(type=""), [], "type"),
        (_h(id=-1), [], "id"),
        (_h(id=True), [], "id"),
        (_h(meta=[]), [], "meta"),
        (_h(buffers=[["float32", [-1]]]), [b""], "shape"),
        (_h(buffers=[["float32", [1.5]]]), [b""], "shape"),
        (_h(buffers=[["<f4", [1]]]), [b"1234"], "dtype"),
        (_h(buffers=[["float32", [2]]]), [b"1234"], "needs 8"),
        (_h(buffers=TOO_MANY), [b"\0" * 8] * len(TOO_MANY), "at most"),
        (_h(), [b"extra"], "announces 0"),
    ],
)
def test_malformed_headers_are_refused(header: dict, data: list, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        decode([json.dumps(header).encode(), *data], max_bytes=1 << 20)


def test_limits_type_and_json_are_enforced() -> None:
    frames = encode(Message("step", buffers=(np.zeros(1024, np.float32),)))
    with pytest.raises(ProtocolError, match="at most 1000"):
        decode(frames, max_bytes=1000)
    with pytest.raises(ProtocolError, match="unexpected message type"):
        decode(frames, max_bytes=1 << 20, types={"ping"})
    for raw in (b"\xff", b"[1,", b'{"v": NaN}', b"[" * 100_000, b"x" * (17 << 10)):
        with pytest.raises(ProtocolError):
            decode([raw], max_bytes=1 << 20)
    with pytest.raises(ProtocolError):
        encode(Message("x", buffers=(np.zeros(2, object),)))
