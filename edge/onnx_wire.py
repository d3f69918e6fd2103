"""The protobuf wire format of ONNX models, walked without the `onnx` package.

A device runs only numpy + onnxruntime, yet a package's graphs must be inspected there (the
ops a backend supports, the external data a graph names). Protobuf's wire format is simple
enough to walk for the few fields needed; numbers are onnx.proto's.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from edge.errors import PackageError

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5


def varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """(value, position after it) of the varint at `pos`."""
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise PackageError("truncated ONNX graph (varint runs past the end)")
        byte = buf[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def fields(buf: bytes | memoryview) -> Iterator[tuple[int, int | bytes | memoryview]]:
    """(field number, value): ints for varints, slices of `buf` for length-delimited fields
    (zero-copy when `buf` is a memoryview)."""
    pos = 0
    while pos < len(buf):
        tag, pos = varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == WIRE_VARINT:
            value, pos = varint(buf, pos)
            yield number, value
        elif wire == WIRE_LEN:
            length, pos = varint(buf, pos)
            if pos + length > len(buf):
                raise PackageError("truncated ONNX graph")
            yield number, buf[pos : pos + length]
            pos += length
        elif wire in (WIRE_I64, WIRE_I32):
            pos += 8 if wire == WIRE_I64 else 4
        else:
            raise PackageError(f"unsupported protobuf wire type {wire} in ONNX graph")


@dataclass(frozen=True)
class Field:
    number: int
    raw: bytes  # the whole field, tag included, ready to copy
    payload: bytes  # the value of a length-delimited field (b"" for the other wire types)


def raw_fields(buf: bytes) -> Iterator[Field]:
    """Every field of `buf` whole (numbers of every wire type kept), to copy or rewrite."""
    pos = 0
    while pos < len(buf):
        start = pos
        tag, pos = varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        payload = b""
        if wire == WIRE_VARINT:
            _, pos = varint(buf, pos)
        elif wire == WIRE_I64:
            pos += 8
        elif wire == WIRE_I32:
            pos += 4
        elif wire == WIRE_LEN:
            length, pos = varint(buf, pos)
            payload = buf[pos : pos + length]
            pos += length
        else:
            raise PackageError(f"unsupported protobuf wire type {wire} in ONNX graph")
        if pos > len(buf):
            raise PackageError("truncated ONNX graph")
        yield Field(number, buf[start:pos], payload)


MODEL_GRAPH = 7  # ModelProto.graph


def model_graph(model: bytes) -> tuple[list[Field], bytes]:
    """A ModelProto's fields but its graph (to copy back), and its graph's bytes."""
    header, graph = [], None
    for field in raw_fields(model):
        if field.number == MODEL_GRAPH:
            graph = field.payload
        else:
            header.append(field)
    if graph is None:
        raise PackageError("ONNX model has no graph")
    return header, graph


def text(value: int | bytes | memoryview) -> str:
    assert isinstance(value, bytes | memoryview)
    return bytes(value).decode("utf-8", "replace")


def encode_varint(value: int) -> bytes:
    """`value` (>= 0) as a protobuf varint."""
    assert value >= 0, value
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def len_field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    return encode_varint(number << 3 | WIRE_LEN) + encode_varint(len(payload)) + payload
