"""ONNX nodes for ONNX Runtime's `com.microsoft.MatMulNBits`, the int4/int8 weight-only matmul.

The exporter calls `matmul_nbits_node` to replace `MatMul(x, W)` in block graphs. Inputs and
attributes follow ORT's contrib-op spec (`docs/ContribOperators.md`) and the naming ORT's own
`MatMulNBitsQuantizer` uses (`<weight>_Q4`, `<weight>_scales`, `<weight>_zero_points`).
"""

from __future__ import annotations

import numpy as np
from onnx import ModelProto, NodeProto, TensorProto, helper, numpy_helper

from quant.blockwise import QuantizedWeight

MS_DOMAIN = "com.microsoft"
MS_OPSET_VERSION = 1


def matmul_nbits_names(weight_name: str, q: QuantizedWeight) -> list[str]:
    """Initializer names for B, scales and (when stored) zero points, in input order."""
    names = [f"{weight_name}_Q{q.bits}", f"{weight_name}_scales"]
    if q.zero_points is not None:
        names.append(f"{weight_name}_zero_points")
    return names


def matmul_nbits_arrays(weight_name: str, q: QuantizedWeight) -> dict[str, np.ndarray]:
    """Name -> array for the weight file: what the node reads, byte for byte."""
    arrays = [q.packed, q.scales] + ([] if q.zero_points is None else [q.zero_points])
    return dict(zip(matmul_nbits_names(weight_name, q), arrays, strict=True))


def matmul_nbits_node(
    input_name: str,
    output_name: str,
    q: QuantizedWeight,
    weight_name: str,
    accuracy_level: int = 4,
    node_name: str | None = None,
) -> tuple[NodeProto, list[TensorProto]]:
    """`y = input @ dequantize(q)` as one `MatMulNBits` node plus its initializers.

    `accuracy_level=4` quantizes activations to int8 per block: the fast CPU path (only with
    uint8 or absent zero points), and for 8-bit weights the only fast one. 0 computes in fp32.
    As in ORT's quantizer the attribute is left out when 0, since some execution providers
    reject it.
    """
    names = matmul_nbits_names(weight_name, q)
    attributes = {"K": q.K, "N": q.N, "bits": q.bits, "block_size": q.block_size}
    if accuracy_level:
        attributes["accuracy_level"] = accuracy_level
    node = helper.make_node(
        "MatMulNBits",
        [input_name, *names],
        [output_name],
        name=node_name or f"{weight_name}_MatMulNBits",
        domain=MS_DOMAIN,
        **attributes,
    )
    arrays = matmul_nbits_arrays(weight_name, q)
    return node, [numpy_helper.from_array(a, name) for name, a in arrays.items()]


def matmul_nbits_model(q: QuantizedWeight, accuracy_level: int = 4) -> ModelProto:
    """A one-node model `y[M, N] = x[M, K] @ W` for tests and kernel benchmarks."""
    node, initializers = matmul_nbits_node("x", "y", q, "W", accuracy_level)
    graph = helper.make_graph(
        [node],
        "matmul_nbits",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", q.K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", q.N])],
        initializers,
    )
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid(MS_DOMAIN, MS_OPSET_VERSION)]
    return helper.make_model(graph, opset_imports=opsets)
