"""Read what ahead-of-time checks need from an ONNX graph, without the `onnx` package.

A device runs only numpy + onnxruntime, yet `supports` must inspect a part's graph: its ops,
its input shapes, the element types around each MatMul. The protobuf wire format is simple
enough to walk for those few fields (numbers from onnx.proto). Weights stay external, so the
bytes walked are small.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from edge.errors import PackageError
from edge.onnx_wire import fields as _fields
from edge.onnx_wire import text as _text
from edge.onnx_wire import varint as _varint

MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 1, 5, 11, 12
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
ATTR_NAME, ATTR_INT = 1, 3
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR, TENSOR_ELEM_TYPE, TENSOR_SHAPE = 1, 1, 2
SHAPE_DIM, DIM_VALUE, DIM_PARAM = 1, 1, 2
INIT_DIMS, INIT_DATA_TYPE, INIT_NAME = 1, 2, 8

# TensorProto.DataType
ELEM_TYPES = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    16: "bfloat16",
    21: "uint4",
    22: "int4",
}

Dim = int | str | None  # a fixed size, a symbolic name, or unknown


@dataclass(frozen=True)
class Node:
    op_type: str
    domain: str  # "" for the default ONNX domain
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    ints: dict[str, int] = field(default_factory=dict)  # integer attributes

    @property
    def qualified(self) -> str:
        """`MatMul` for standard ops, `com.microsoft:GroupQueryAttention` for others."""
        return self.op_type if self.domain in ("", "ai.onnx") else f"{self.domain}:{self.op_type}"


@dataclass(frozen=True)
class ValueInfo:
    name: str
    elem_type: str
    dims: tuple[Dim, ...] | None  # None: no shape recorded at all


@dataclass(frozen=True)
class Initializer:
    name: str
    elem_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class GraphInfo:
    nodes: tuple[Node, ...]
    inputs: tuple[ValueInfo, ...]
    outputs: tuple[ValueInfo, ...]
    initializers: dict[str, Initializer]

    @cached_property
    def producers(self) -> dict[str, Node]:
        """Tensor name -> the node that outputs it."""
        return {out: node for node in self.nodes for out in node.outputs if out}

    @property
    def ops(self) -> set[str]:
        return {n.qualified for n in self.nodes}

    def quantized_type(self, tensor: str) -> str | None:
        """The element type of a tensor a DequantizeLinear reads: an initializer's, a graph
        input's, or a QuantizeLinear's output (its zero point's type, else `output_dtype`,
        else uint8 as ONNX defines); None when it comes from anything else."""
        if tensor in self.initializers:
            return self.initializers[tensor].elem_type
        for value in self.inputs:
            if value.name == tensor:
                return value.elem_type
        node = self.producers.get(tensor)
        if node is None or node.op_type != "QuantizeLinear":
            return None
        if len(node.inputs) > 2 and node.inputs[2] in self.initializers:
            return self.initializers[node.inputs[2]].elem_type
        return ELEM_TYPES.get(node.ints.get("output_dtype", 2), "unknown")

    def quantize_types(self) -> set[str]:
        """Element types every QuantizeLinear of the graph produces."""
        return {
            self.quantized_type(out) or "unknown"
            for n in self.nodes
            if n.op_type == "QuantizeLinear"
            for out in n.outputs[:1]
        }


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def parse_node(buf: bytes) -> Node:
    """A NodeProto's op, domain, name, inputs, outputs and integer attributes."""
    inputs, outputs, ints = [], [], {}
    op_type = domain = name = ""
    for number, value in _fields(buf):
        if number == NODE_INPUT:
            inputs.append(_text(value))
        elif number == NODE_OUTPUT:
            outputs.append(_text(value))
        elif number == NODE_OP_TYPE:
            op_type = _text(value)
        elif number == NODE_DOMAIN:
            domain = _text(value)
        elif number == NODE_NAME:
            name = _text(value)
        elif number == NODE_ATTRIBUTE:
            attr = dict(_fields(value))  # type: ignore[arg-type]
            if ATTR_INT in attr and ATTR_NAME in attr:
                ints[_text(attr[ATTR_NAME])] = _signed(int(attr[ATTR_INT]))
    return Node(op_type, domain, name, tuple(inputs), tuple(outputs), ints)


def _dims(shape: bytes) -> tuple[Dim, ...]:
    dims: list[Dim] = []
    for number, dim in _fields(shape):
        if number != SHAPE_DIM:
            continue
        entry = dict(_fields(dim))  # type: ignore[arg-type]
        if DIM_VALUE in entry:
            dims.append(_signed(int(entry[DIM_VALUE])))
        elif DIM_PARAM in entry:
            dims.append(_text(entry[DIM_PARAM]))
        else:
            dims.append(None)
    return tuple(dims)


def _value_info(buf: bytes) -> ValueInfo:
    name, elem, dims = "", "unknown", None
    for number, value in _fields(buf):
        if number == VALUE_NAME:
            name = _text(value)
        elif number == VALUE_TYPE:
            for t_number, tensor in _fields(value):  # type: ignore[arg-type]
                if t_number != TYPE_TENSOR:
                    continue
                for s_number, s_value in _fields(tensor):  # type: ignore[arg-type]
                    if s_number == TENSOR_ELEM_TYPE:
                        elem = ELEM_TYPES.get(int(s_value), f"type {s_value}")  # type: ignore[arg-type]
                    elif s_number == TENSOR_SHAPE:
                        dims = _dims(s_value)  # type: ignore[arg-type]
    return ValueInfo(name, elem, dims)


def _initializer(buf: bytes) -> Initializer:
    name, elem, dims = "", "unknown", []
    for number, value in _fields(buf):
        if number == INIT_NAME:
            name = _text(value)
        elif number == INIT_DATA_TYPE:
            elem = ELEM_TYPES.get(int(value), f"type {value}")  # type: ignore[arg-type]
        elif number == INIT_DIMS:
            if isinstance(value, bytes):  # packed repeated int64
                pos = 0
                while pos < len(value):
                    dim, pos = _varint(value, pos)
                    dims.append(_signed(dim))
            else:
                dims.append(_signed(value))
    return Initializer(name, elem, tuple(dims))


def read_graph(model: bytes) -> GraphInfo:
    """The nodes, inputs, outputs and initializer types of a serialized ONNX model."""
    graph = next((v for n, v in _fields(model) if n == MODEL_GRAPH), None)
    if not isinstance(graph, bytes):
        raise PackageError("ONNX model has no graph")
    nodes, inputs, outputs, inits = [], [], [], {}
    for number, value in _fields(graph):
        if not isinstance(value, bytes):
            continue
        if number == GRAPH_NODE:
            nodes.append(parse_node(value))
        elif number == GRAPH_INPUT:
            inputs.append(_value_info(value))
        elif number == GRAPH_OUTPUT:
            outputs.append(_value_info(value))
        elif number == GRAPH_INITIALIZER:
            init = _initializer(value)
            inits[init.name] = init
    return GraphInfo(tuple(nodes), tuple(inputs), tuple(outputs), inits)
