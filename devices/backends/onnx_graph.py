"""Read what ahead-of-time checks need from an ONNX graph, without the `onnx` package.

A device runs only numpy + onnxruntime, yet `supports` must inspect a part's graph: its ops,
its input shapes, the element types around each MatMul. The protobuf wire format is simple
enough to walk for those few fields (numbers from onnx.proto). Weights stay external, so the
bytes walked are small.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property

from edge.errors import PackageError

WIRE_VARINT, WIRE_I64, WIRE_LEN, WIRE_I32 = 0, 1, 2, 5
MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_INPUT, GRAPH_OUTPUT = 1, 5, 11, 12
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
ATTR_NAME, ATTR_INT = 1, 3
VALUE_NAME, VALUE_TYPE = 1, 2
TYPE_TENSOR, TENSOR_ELEM_TYPE, TENSOR_SHAPE = 1, 1, 2
SHAPE_DIM, DIM_VALUE, DIM_PARAM = 1, 1, 2
INIT_DIMS, INIT_DATA_TYPE, INIT_NAME = 1, 2, 8

# TensorProto.DataType
ELEM_TYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32",
              7: "int64", 9: "bool", 10: "float16", 11: "float64", 16: "bfloat16",
              21: "uint4", 22: "int4"}

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
        return {self.quantized_type(out) or "unknown" for n in self.nodes
                if n.op_type == "QuantizeLinear" for out in n.outputs[:1]}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
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


def _fields(buf: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value): ints for varints, bytes for length-delimited fields."""
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == WIRE_VARINT:
            value, pos = _varint(buf, pos)
            yield number, value
        elif wire == WIRE_LEN:
            length, pos = _varint(buf, pos)
            if pos + length > len(buf):
                raise PackageError("truncated ONNX graph")
            yield number, buf[pos:pos + length]
            pos += length
        elif wire in (WIRE_I64, WIRE_I32):
            pos += 8 if wire == WIRE_I64 else 4
        else:
            raise PackageError(f"unsupported protobuf wire type {wire} in ONNX graph")


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _text(value: int | bytes) -> str:
    assert isinstance(value, bytes)
    return value.decode("utf-8", "replace")


def _node(buf: bytes) -> Node:
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
            nodes.append(_node(value))
        elif number == GRAPH_INPUT:
            inputs.append(_value_info(value))
        elif number == GRAPH_OUTPUT:
            outputs.append(_value_info(value))
        elif number == GRAPH_INITIALIZER:
            init = _initializer(value)
            inits[init.name] = init
    return GraphInfo(tuple(nodes), tuple(inputs), tuple(outputs), inits)


# ---- external data: where a graph could make ONNX Runtime read files -----------------------------
MODEL_TRAINING_INFO, MODEL_FUNCTIONS = 20, 25
TRAINING_GRAPHS = (1, 2)  # initialization, algorithm
FUNCTION_NODE = 7
GRAPH_SPARSE_INITIALIZER = 15
SPARSE_TENSORS = (1, 2)  # values, indices
ATTR_TENSOR, ATTR_GRAPH, ATTR_TENSORS, ATTR_GRAPHS = 5, 6, 10, 11
ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS = 22, 23
TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 13, 14
EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
MAX_GRAPH_DEPTH = 32  # subgraphs nest (If inside Loop); nothing we export nests at all


@dataclass(frozen=True)
class ExternalTensor:
    """A tensor whose bytes ONNX Runtime would read from a file: its name and `location`."""

    name: str
    location: str


def external_tensors(model: bytes) -> list[ExternalTensor]:
    """Every tensor anywhere in `model` stored as external data: graph initializers, sparse
    initializers, tensor attributes (`Constant`), subgraphs, functions and training graphs.

    A serialized model given to ONNX Runtime as bytes resolves such locations against the
    process's working directory, so a package must not be able to name any it does not own.
    """
    found: list[ExternalTensor] = []
    for number, value in _fields(model):
        if number == MODEL_GRAPH and isinstance(value, bytes):
            _graph_external(value, found, 0)
        elif number == MODEL_FUNCTIONS and isinstance(value, bytes):
            for f_number, node in _fields(value):
                if f_number == FUNCTION_NODE and isinstance(node, bytes):
                    _node_external(node, found, 1)
        elif number == MODEL_TRAINING_INFO and isinstance(value, bytes):
            for t_number, graph in _fields(value):
                if t_number in TRAINING_GRAPHS and isinstance(graph, bytes):
                    _graph_external(graph, found, 1)
    return found


def _graph_external(graph: bytes, found: list[ExternalTensor], depth: int) -> None:
    if depth > MAX_GRAPH_DEPTH:
        raise PackageError(f"ONNX graph nests subgraphs over {MAX_GRAPH_DEPTH} deep")
    for number, value in _fields(graph):
        if not isinstance(value, bytes):
            continue
        if number == GRAPH_INITIALIZER:
            _tensor_external(value, found)
        elif number == GRAPH_SPARSE_INITIALIZER:
            _sparse_external(value, found)
        elif number == GRAPH_NODE:
            _node_external(value, found, depth)


def _node_external(node: bytes, found: list[ExternalTensor], depth: int) -> None:
    for number, attribute in _fields(node):
        if number != NODE_ATTRIBUTE or not isinstance(attribute, bytes):
            continue
        for a_number, value in _fields(attribute):
            if not isinstance(value, bytes):
                continue
            if a_number in (ATTR_TENSOR, ATTR_TENSORS):
                _tensor_external(value, found)
            elif a_number in (ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS):
                _sparse_external(value, found)
            elif a_number in (ATTR_GRAPH, ATTR_GRAPHS):
                _graph_external(value, found, depth + 1)


def _sparse_external(sparse: bytes, found: list[ExternalTensor]) -> None:
    for number, value in _fields(sparse):
        if number in SPARSE_TENSORS and isinstance(value, bytes):
            _tensor_external(value, found)


def _tensor_external(tensor: bytes, found: list[ExternalTensor]) -> None:
    name, location, external = "", "", False
    for number, value in _fields(tensor):
        if number == INIT_NAME:
            name = _text(value)
        elif number == TENSOR_DATA_LOCATION:
            external = external or value == EXTERNAL
        elif number == TENSOR_EXTERNAL_DATA and isinstance(value, bytes):
            external = True
            entry = dict(_fields(value))
            if _text(entry.get(1, b"")) == "location":
                location = _text(entry.get(2, b""))
    if external:
        found.append(ExternalTensor(name, location))
