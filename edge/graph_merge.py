"""Merge the ONNX graphs of consecutive parts into one model, without the `onnx` package.

The runtime must not depend on `onnx` (a Raspberry Pi has only numpy and onnxruntime), yet one
session per device segment is much faster than one per part. ONNX files are protobuf, and the
few fields merging touches are simple to walk at the wire level: nodes and initializers are
concatenated (initializers shared by two parts, such as tied embeddings, are kept once), and a
tensor that one part outputs and a later part inputs becomes internal to the merged graph.
Part graphs are written with globally unique names, which makes this sound.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge.errors import PackageError
from edge.onnx_wire import Field as _Field
from edge.onnx_wire import len_field as _len_field
from edge.onnx_wire import model_graph as _graph_of
from edge.onnx_wire import raw_fields as _fields
from edge.onnx_wire import varint as _varint

# protobuf field numbers from onnx.proto
MODEL_GRAPH, MODEL_OPSET_IMPORT = 7, 8
OPSET_DOMAIN, OPSET_VERSION = 1, 2
GRAPH_NODE, GRAPH_NAME, GRAPH_INITIALIZER = 1, 2, 5
GRAPH_INPUT, GRAPH_OUTPUT, GRAPH_VALUE_INFO = 11, 12, 13
VALUE_INFO_NAME = 1
TENSOR_NAME = 8


def _string_field(message: bytes, number: int) -> str:
    for field in _fields(message):
        if field.number == number:
            try:
                return field.payload.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PackageError("corrupted ONNX graph: a tensor name is not UTF-8") from exc
    return ""


def _merged_opsets(models: Sequence[bytes]) -> list[_Field]:
    """Every domain any part imports, at the highest version imported."""
    best: dict[str, tuple[int, _Field]] = {}
    for model in models:
        for field in _graph_of(model)[0]:
            if field.number != MODEL_OPSET_IMPORT:
                continue
            domain, version = "", 0
            for sub in _fields(field.payload):
                if sub.number == OPSET_DOMAIN:
                    domain = sub.payload.decode("utf-8", "replace")
                elif sub.number == OPSET_VERSION:
                    version = _varint(sub.raw, 1)[0]
            if domain not in best or version > best[domain][0]:
                best[domain] = (version, field)
    return [field for _, field in best.values()]


def initializer_names(model: bytes) -> set[str]:
    """Names of a model's initializers (to hand ONNX Runtime exactly the weights it reads)."""
    _, graph = _graph_of(model)
    return {
        _string_field(f.payload, TENSOR_NAME)
        for f in _fields(graph)
        if f.number == GRAPH_INITIALIZER
    }


def merge_models(models: Sequence[bytes], name: str = "segment") -> bytes:
    """One ONNX model computing the given part models in order (see module docstring)."""
    if not models:
        raise ValueError("no graphs to merge")
    if len(models) == 1:
        list(_fields(_graph_of(models[0])[1]))  # walk it: a corrupt graph is a PackageError
        return models[0]
    header, _ = _graph_of(models[0])
    header = [f for f in header if f.number != MODEL_OPSET_IMPORT] + _merged_opsets(models)
    graphs = [list(_fields(_graph_of(m)[1])) for m in models]

    def names(graph: list[_Field], number: int, name_field: int) -> list[str]:
        return [_string_field(f.payload, name_field) for f in graph if f.number == number]

    part_inputs = [names(g, GRAPH_INPUT, VALUE_INFO_NAME) for g in graphs]
    part_outputs = [names(g, GRAPH_OUTPUT, VALUE_INFO_NAME) for g in graphs]
    produced_before: set[str] = set()
    consumed_later = [set().union(*part_inputs[i + 1 :]) for i in range(len(graphs))]
    nodes, initializers, inputs, outputs = [], [], [], []
    seen_inits: set[str] = set()
    seen_inputs: set[str] = set()
    for i, graph in enumerate(graphs):
        for field in graph:
            if field.number == GRAPH_NODE:
                nodes.append(field.raw)
            elif field.number == GRAPH_INITIALIZER:
                tensor = _string_field(field.payload, TENSOR_NAME)
                if tensor not in seen_inits:
                    seen_inits.add(tensor)
                    initializers.append(field.raw)
            elif field.number == GRAPH_INPUT:
                value = _string_field(field.payload, VALUE_INFO_NAME)
                if value not in produced_before and value not in seen_inputs:
                    seen_inputs.add(value)
                    inputs.append(field.raw)
            elif field.number == GRAPH_OUTPUT:
                value = _string_field(field.payload, VALUE_INFO_NAME)
                if value not in consumed_later[i]:
                    outputs.append(field.raw)
        produced_before.update(part_outputs[i])
    graph = b"".join(
        [_len_field(GRAPH_NAME, name.encode()), *nodes, *initializers, *inputs, *outputs]
    )
    return b"".join(f.raw for f in header) + _len_field(MODEL_GRAPH, graph)
