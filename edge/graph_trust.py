"""Which files a package's graphs may make a runtime read: only their own manifest tensors.

ONNX Runtime resolves a graph's external-data locations against the working directory when the
graph comes as bytes, and OpenVINO against the graph file; so a graph that names any other
location could read files outside the package. Leaf: no runtime, no `onnx` package.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from edge.errors import PackageError
from edge.format import Manifest
from edge.onnx_wire import fields, text

MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INITIALIZER = 1, 5
NODE_ATTRIBUTE = 5
INIT_NAME = 8
# Messages are walked as memoryviews: no copy of the raw tensor bytes a graph may embed.
MESSAGE = (bytes, memoryview)

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
    for number, value in fields(memoryview(model)):
        if number == MODEL_GRAPH and isinstance(value, MESSAGE):
            _graph_external(value, found, 0)
        elif number == MODEL_FUNCTIONS and isinstance(value, MESSAGE):
            for f_number, node in fields(value):
                if f_number == FUNCTION_NODE and isinstance(node, MESSAGE):
                    _node_external(node, found, 1)
        elif number == MODEL_TRAINING_INFO and isinstance(value, MESSAGE):
            for t_number, graph in fields(value):
                if t_number in TRAINING_GRAPHS and isinstance(graph, MESSAGE):
                    _graph_external(graph, found, 1)
    return found


def _graph_external(graph: bytes, found: list[ExternalTensor], depth: int) -> None:
    if depth > MAX_GRAPH_DEPTH:
        raise PackageError(f"ONNX graph nests subgraphs over {MAX_GRAPH_DEPTH} deep")
    for number, value in fields(graph):
        if not isinstance(value, MESSAGE):
            continue
        if number == GRAPH_INITIALIZER:
            _tensor_external(value, found)
        elif number == GRAPH_SPARSE_INITIALIZER:
            _sparse_external(value, found)
        elif number == GRAPH_NODE:
            _node_external(value, found, depth)


def _node_external(node: bytes, found: list[ExternalTensor], depth: int) -> None:
    for number, attribute in fields(node):
        if number != NODE_ATTRIBUTE or not isinstance(attribute, MESSAGE):
            continue
        for a_number, value in fields(attribute):
            if not isinstance(value, MESSAGE):
                continue
            if a_number in (ATTR_TENSOR, ATTR_TENSORS):
                _tensor_external(value, found)
            elif a_number in (ATTR_SPARSE_TENSOR, ATTR_SPARSE_TENSORS):
                _sparse_external(value, found)
            elif a_number in (ATTR_GRAPH, ATTR_GRAPHS):
                _graph_external(value, found, depth + 1)


def _sparse_external(sparse: bytes, found: list[ExternalTensor]) -> None:
    for number, value in fields(sparse):
        if number in SPARSE_TENSORS and isinstance(value, MESSAGE):
            _tensor_external(value, found)


def _tensor_external(tensor: bytes, found: list[ExternalTensor]) -> None:
    name, location, external = "", "", False
    for number, value in fields(tensor):
        if number == INIT_NAME:
            name = text(value)
        elif number == TENSOR_DATA_LOCATION:
            external = external or value == EXTERNAL
        elif number == TENSOR_EXTERNAL_DATA and isinstance(value, MESSAGE):
            external = True
            entry = dict(fields(value))
            if text(entry.get(1, b"")) == "location":
                location = text(entry.get(2, b""))
    if external:
        found.append(ExternalTensor(name, location))


def check_graphs(manifest: Manifest, read: Callable[[str], bytes]) -> None:
    """Refuse a graph with external data other than its part's own manifest tensors.

    Those are handed to the runtime from the package's files; any other external location
    would be resolved by ONNX Runtime against the working directory, outside the package.
    """
    for part in manifest.parts:
        own = {t.name: t.file for t in part.tensors}
        for graph in part.graph_files:
            for tensor in external_tensors(read(graph)):
                # ONNX Runtime gets manifest tensors from us; OpenVINO reads the graph's own
                # location, so that must be the manifest's file too.
                if own.get(tensor.name) != tensor.location:
                    raise PackageError(
                        f"graph {graph} of part {part.name} stores tensor {tensor.name!r} as "
                        f"external data at {tensor.location!r}, which is not where the manifest "
                        "puts that part's tensors: a package may only read its own declared "
                        "weights"
                    )
