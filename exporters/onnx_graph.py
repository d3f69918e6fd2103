"""A small builder for the ONNX graphs of one part, with weights as external data.

Graphs never embed weight bytes: every initializer points at its tensor in the package's
weight files (`TensorEntry`), so a graph file is a few kilobytes and the runtime can hand ONNX
Runtime the bytes from its own (mmapped or streamed) buffers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.format import TensorEntry

# Opset 21: QuantizeLinear/DequantizeLinear with 16-bit activations (A16W8 for NPUs).
OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
IR_VERSION = 10

ONNX_DTYPES = {
    "float32": TensorProto.FLOAT,
    "float16": TensorProto.FLOAT16,
    "bfloat16": TensorProto.BFLOAT16,
    "int64": TensorProto.INT64,
    "int32": TensorProto.INT32,
    "int8": TensorProto.INT8,
    "uint8": TensorProto.UINT8,
    # Packed 4-bit tensors are stored as the uint8 blobs that MatMulNBits consumes.
    "int4": TensorProto.UINT8,
    "uint4": TensorProto.UINT8,
}


def external_initializer(entry: TensorEntry) -> TensorProto:
    """An initializer whose bytes live at `entry.offset` of `entry.file`."""
    tensor = TensorProto()
    tensor.name = entry.name
    tensor.data_type = ONNX_DTYPES[entry.dtype]
    tensor.dims.extend(entry.shape)
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (
        ("location", entry.file),
        ("offset", str(entry.offset)),
        ("length", str(entry.nbytes)),
    ):
        item = tensor.external_data.add()
        item.key, item.value = key, value
    return tensor


class GraphBuilder:
    """Collects nodes, initializers and the graph interface, then emits a `ModelProto`.

    Node and constant names are prefixed with the part name so that the graphs of consecutive
    parts can be merged into one session without clashes.
    """

    def __init__(self, part_name: str) -> None:
        self.part_name = part_name
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{self.part_name}/{hint}_{self._count}"

    def input(self, name: str, elem_type: int, shape: Sequence[int | str]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))
        return name

    def output(self, name: str, elem_type: int, shape: Sequence[int | str]) -> None:
        self.outputs.append(helper.make_tensor_value_info(name, elem_type, list(shape)))

    def weight(self, entry: TensorEntry) -> str:
        self.initializers.append(external_initializer(entry))
        return entry.name

    def constant(self, hint: str, value: np.ndarray) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def op(
        self,
        op_type: str,
        inputs: Sequence[str],
        n_outputs: int = 1,
        *,
        outputs: Sequence[str] | None = None,
        domain: str = "",
        **attrs: object,
    ) -> list[str]:
        names = (
            list(outputs) if outputs else [self.fresh(op_type.lower()) for _ in range(n_outputs)]
        )
        self.nodes.append(
            helper.make_node(
                op_type, list(inputs), names, name=self.fresh(op_type), domain=domain, **attrs
            )
        )
        return names

    def op1(self, op_type: str, inputs: Sequence[str], **kwargs: object) -> str:
        return self.op(op_type, inputs, **kwargs)[0]

    def model(self) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, self.part_name, self.inputs, self.outputs, self.initializers
        )
        model = helper.make_model(graph, opset_imports=OPSETS, producer_name="edge")
        model.ir_version = IR_VERSION
        return model
