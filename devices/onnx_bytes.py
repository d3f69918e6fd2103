"""Just enough ONNX protobuf encoding to build a one-node model without the `onnx` package.

The runtime (a Pi with numpy + onnxruntime) has no `onnx`, yet the microbenchmark needs a tiny
MatMulInteger graph; protobuf's wire format is simple enough to write the few messages by hand.
Field numbers are those of onnx.proto3.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.onnx_wire import encode_varint as _varint

WIRE_VARINT, WIRE_LEN = 0, 2
# TensorProto.DataType values.
DTYPES = {
    np.dtype(np.float32): 1,
    np.dtype(np.uint8): 2,
    np.dtype(np.int8): 3,
    np.dtype(np.int32): 6,
    np.dtype(np.int64): 7,
}


def _int(number: int, value: int) -> bytes:
    return _varint(number << 3 | WIRE_VARINT) + _varint(value)


def _bytes(number: int, payload: bytes | str) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return _varint(number << 3 | WIRE_LEN) + _varint(len(data)) + data


def value_info(name: str, dtype: np.dtype, shape: Sequence[int]) -> bytes:
    """ValueInfoProto{name, type: TypeProto{tensor_type{elem_type, shape{dim{dim_value}}}}}."""
    dims = b"".join(_bytes(1, _int(1, d)) for d in shape)
    tensor_type = _int(1, DTYPES[np.dtype(dtype)]) + _bytes(2, dims)
    return _bytes(1, name) + _bytes(2, _bytes(1, tensor_type))


def tensor(name: str, array: np.ndarray) -> bytes:
    """TensorProto{dims, data_type, name, raw_data (little-endian)}."""
    dims = b"".join(_int(1, d) for d in array.shape)
    raw = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
    return dims + _int(2, DTYPES[array.dtype]) + _bytes(8, name) + _bytes(9, raw)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str) -> bytes:
    """NodeProto{input, output, name, op_type} in the default ONNX domain."""
    fields = [_bytes(1, i) for i in inputs] + [_bytes(2, o) for o in outputs]
    return b"".join(fields) + _bytes(3, name) + _bytes(4, op_type)


def model(
    nodes: Sequence[bytes],
    inputs: Sequence[bytes],
    outputs: Sequence[bytes],
    initializers: Sequence[bytes] = (),
    opset: int = 17,
    ir_version: int = 8,
) -> bytes:
    """ModelProto bytes, ready for `onnxruntime.InferenceSession(bytes)`."""
    graph = (
        b"".join(_bytes(1, n) for n in nodes)
        + _bytes(2, "graph")
        + b"".join(_bytes(5, t) for t in initializers)
        + b"".join(_bytes(11, i) for i in inputs)
        + b"".join(_bytes(12, o) for o in outputs)
    )
    opset_import = _bytes(1, "") + _int(2, opset)
    return (
        _int(1, ir_version) + _bytes(2, "edge.devices") + _bytes(7, graph) + _bytes(8, opset_import)
    )


def matmul_integer_model(weight: np.ndarray, rows: int) -> bytes:
    """Y[int32; rows, N] = MatMulInteger(A[uint8; rows, K], W[int8; K, N] as an initializer).

    W is an initializer so ORT pre-packs it once, as it does for a resident model's weights.
    """
    k, n = weight.shape
    return model(
        [node("MatMulInteger", ["A", "W"], ["Y"], "matmul")],
        [value_info("A", np.dtype(np.uint8), (rows, k))],
        [value_info("Y", np.dtype(np.int32), (rows, n))],
        [tensor("W", weight.astype(np.int8, copy=False))],
        opset=17,
    )
