"""Wide matrices loaded in slices of their output rows where ONNX Runtime maps a stored packing.

Building a session from a packing stored at an earlier load (`ort_prepacked`), ONNX Runtime
still packs every matrix once more on the heap (1.25x the 8-bit data, beside its scales),
reading the original from the store, then keeps the stored copy: the load peaks above its
steady memory by the largest matrix about three times over. That matrix is the head: Qwen2.5's
151,936 rows at 8 bits are 146 MiB, and the 0.5B's load peaked 330 MiB above its steady RSS
for it (strace: one 170 MB anonymous buffer and the original's map, both freed around the head
alone). A float head tied to the embedding (SmolLM2) is also held twice: the Gather keeps the
whole table resident after the load read all of it.

So a `MatMulNBits` node (data, scales, zero points) or a float `Gemm` with a transposed weight
whose weights exceed `SLICE_BYTES` becomes one node per slice of its output rows, each reading
a contiguous range of every tensor (the exporter stores weights by output row), and a `Concat`
of their outputs under the original output's name. Each output row is its own dot products,
and slices start on the kernels' row grid, so the logits are the same bit for bit; the load
transient is a slice's; a tied table stays whole for its Gather alone, paged in by the rows
used. The graph is edited at the protobuf wire level (the runtime has no `onnx` package), and
the slices read the package's own bytes. The heap path, which holds every map until the whole
segment has loaded, gains nothing from slices and does not take them.
"""

from __future__ import annotations

import math
from dataclasses import replace
from itertools import pairwise

from devices.backends.onnx_graph import Node, parse_node
from edge.format import TensorEntry
from edge.onnx_wire import (
    MODEL_GRAPH,
    encode_varint,
    fields,
    len_field,
    model_graph,
    raw_fields,
    text,
)

SLICE_BYTES = 32 << 20  # the largest matrix a load packs at once
# Slices start on this row grid: ONNX Runtime's kernels compute rows in tiles, and a row's sums
# run in the same order only where the tiles fall on the same rows (measured: slices at
# arbitrary rows moved logits by up to 1e-6).
ROW_ALIGN = 64

GRAPH_NODE, GRAPH_INITIALIZER = 1, 5
NODE_INPUT, NODE_OUTPUT, NODE_NAME, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 2, 3, 4, 5, 7
ATTR_NAME, ATTR_INT, ATTR_TYPE, ATTR_TYPE_INT = 1, 3, 20, 2
TENSOR_DIMS, TENSOR_DATA_TYPE, TENSOR_NAME, TENSOR_EXTERNAL, TENSOR_LOCATION = 1, 2, 8, 13, 14
UINT8, EXTERNAL = 2, 1
ENTRY_KEY, ENTRY_VALUE = 1, 2
NBITS_INPUTS = 4  # A, B, scales, zero points; g_idx and bias are not split


def slice_count(nbytes: int, limit: int = SLICE_BYTES) -> int:
    """Slices a matrix of `nbytes` (data, scales and zero points) loads in, given enough rows."""
    return max(1, math.ceil(nbytes / limit))


def row_ranges(rows: int, nbytes: int, limit: int = SLICE_BYTES) -> list[tuple[int, int]]:
    """[start, end) output rows of each slice of a matrix of `rows` rows and `nbytes` bytes
    (data, scales and zero points): as few even slices as keep each within `limit`, each
    starting at a multiple of ROW_ALIGN rows."""
    count = max(1, min(rows // ROW_ALIGN, slice_count(nbytes, limit)))
    bounds = [rows * i // count // ROW_ALIGN * ROW_ALIGN for i in range(count)] + [rows]
    return list(pairwise(bounds))


def _int_attribute(name: str, value: int) -> bytes:
    encoded = encode_varint(value % (1 << 64))  # two's complement, as protobuf's int64
    return (
        len_field(ATTR_NAME, name.encode())
        + encode_varint(ATTR_INT << 3)
        + encoded
        + encode_varint(ATTR_TYPE << 3)
        + encode_varint(ATTR_TYPE_INT)
    )


def _slice_node(node: Node, raw: bytes, inputs: list[str], output: str, rows: int, j: int) -> bytes:
    """`node` (`raw`: its bytes) reading `inputs` into `output`, with N = `rows`; its other
    attributes as they were."""
    out = [len_field(NODE_INPUT, name.encode()) for name in inputs]
    out.append(len_field(NODE_OUTPUT, output.encode()))
    out.append(len_field(NODE_NAME, f"{node.name or output}.rows{j}".encode()))
    for number, value in fields(raw):
        if number in (NODE_INPUT, NODE_OUTPUT, NODE_NAME):
            continue
        if number == NODE_ATTRIBUTE and text(dict(fields(value)).get(ATTR_NAME, b"")) == "N":
            out.append(len_field(NODE_ATTRIBUTE, _int_attribute("N", rows)))
        elif number in (NODE_OP_TYPE, NODE_DOMAIN, NODE_ATTRIBUTE):
            out.append(len_field(number, bytes(value)))
        # a doc string or metadata is not carried over
    return b"".join(out)


def _concat_node(inputs: list[str], output: str) -> bytes:
    return (
        b"".join(len_field(NODE_INPUT, name.encode()) for name in inputs)
        + len_field(NODE_OUTPUT, output.encode())
        + len_field(NODE_NAME, f"{output}.concat_rows".encode())
        + len_field(NODE_OP_TYPE, b"Concat")
        + len_field(NODE_ATTRIBUTE, _int_attribute("axis", -1))
    )


def _initializer(entry: TensorEntry, data_type: int) -> bytes:
    """A TensorProto naming `entry`'s bytes in its package file (ONNX Runtime is handed the
    arrays themselves; the declaration gives their name, type and shape)."""
    out = [encode_varint(TENSOR_DIMS << 3) + encode_varint(d) for d in entry.shape]
    out.append(encode_varint(TENSOR_DATA_TYPE << 3) + encode_varint(data_type))
    out.append(len_field(TENSOR_NAME, entry.name.encode()))
    for key, value in (
        ("location", entry.file),
        ("offset", str(entry.offset)),
        ("length", str(entry.nbytes)),
    ):
        entry_bytes = len_field(ENTRY_KEY, key.encode()) + len_field(ENTRY_VALUE, value.encode())
        out.append(len_field(TENSOR_EXTERNAL, entry_bytes))
    out.append(encode_varint(TENSOR_LOCATION << 3) + encode_varint(EXTERNAL))
    return b"".join(out)


def _tensor_rows(entry: TensorEntry, rows: int, a: int, b: int) -> TensorEntry | None:
    """Rows [a, b) of `entry`, a tensor stored by output row; None where it is not."""
    if not entry.shape or entry.shape[0] % rows or entry.nbytes % rows:
        return None
    per_row = entry.shape[0] // rows
    row_bytes = entry.nbytes // rows
    return replace(
        entry,
        name=f"{entry.name}.rows{a}_{b}",
        shape=((b - a) * per_row, *entry.shape[1:]),
        offset=entry.offset + a * row_bytes,
        nbytes=(b - a) * row_bytes,
    )


def _data_types(graph: bytes | memoryview) -> dict[str, int]:
    types = {}
    for number, value in fields(graph):
        if number == GRAPH_INITIALIZER:
            tensor = dict(fields(value))
            if TENSOR_NAME in tensor:
                types[text(tensor[TENSOR_NAME])] = int(tensor.get(TENSOR_DATA_TYPE, 0))
    return types


def split_wide_matmuls(
    model: bytes, tensors: dict[str, TensorEntry], limit: int | None = None
) -> tuple[bytes, dict[str, TensorEntry]]:
    """`model` with every `MatMulNBits` node and transposed float `Gemm` whose weights (in
    `tensors`, by name) exceed `limit` bytes (None: `SLICE_BYTES`) split by output rows, and
    the tensors the new model reads. A node this cannot split (weights not all in `tensors`,
    not stored by row, a g_idx or bias input) is left as it is; so is a model with none to
    split (the same bytes come back)."""
    limit = SLICE_BYTES if limit is None else limit
    header, graph = model_graph(model)
    plans: dict[str, list[tuple[int, int, list[TensorEntry]]]] = {}
    split: set[str] = set()  # the tensors read by the nodes split
    kept: set[str] = set()  # those read by the nodes left whole
    for number, value in fields(graph):
        if number != GRAPH_NODE:
            continue
        node = parse_node(bytes(value))
        plan = _plan(node, tensors, limit)
        if plan:
            plans[node.outputs[0]] = plan
            split.update(node.inputs[1:])
        else:
            kept.update(node.inputs)
    if not plans:
        return model, tensors
    unread = split - kept  # a tied table still gathered from stays, whole, for the Gather
    types = _data_types(graph)
    out_tensors = {name: t for name, t in tensors.items() if name not in unread}
    nodes, initializers = [], []
    for field in raw_fields(graph):
        if field.number == GRAPH_NODE:
            node = parse_node(field.payload)
            plan = plans.get(node.outputs[0]) if node.outputs else None
            if not plan:
                nodes.append(field.raw)
                continue
            outputs = []
            for j, (a, b, parts) in enumerate(plan):
                output = f"{node.outputs[0]}.rows{j}"
                outputs.append(output)
                names = [node.inputs[0], *(p.name for p in parts)]
                nodes.append(
                    len_field(GRAPH_NODE, _slice_node(node, field.payload, names, output, b - a, j))
                )
                for part, source in zip(parts, node.inputs[1:], strict=True):
                    out_tensors[part.name] = part
                    initializers.append(
                        len_field(GRAPH_INITIALIZER, _initializer(part, types.get(source, UINT8)))
                    )
            nodes.append(len_field(GRAPH_NODE, _concat_node(outputs, node.outputs[0])))
        elif field.number == GRAPH_INITIALIZER:
            if text(dict(fields(field.payload)).get(TENSOR_NAME, b"")) not in unread:
                initializers.append(field.raw)
        else:
            nodes.append(field.raw)
    body = b"".join(nodes + initializers)
    return b"".join(f.raw for f in header) + len_field(MODEL_GRAPH, body), out_tensors


def _plan(
    node: Node, tensors: dict[str, TensorEntry], limit: int
) -> list[tuple[int, int, list[TensorEntry]]] | None:
    """Each slice's rows and tensors for `node`, or None where it stays whole."""
    weights = [name for name in node.inputs[1:] if name]
    if len(weights) != len(node.inputs) - 1 or not all(name in tensors for name in weights):
        return None
    entries = [tensors[name] for name in weights]
    rows = _output_rows(node, entries)
    if rows <= 1:
        return None
    ranges = row_ranges(rows, sum(e.nbytes for e in entries), limit)
    if len(ranges) < 2:
        return None
    plan = []
    for a, b in ranges:
        parts = [_tensor_rows(e, rows, a, b) for e in entries]
        if any(p is None for p in parts):
            return None
        plan.append((a, b, [p for p in parts if p is not None]))
    return plan


def _output_rows(node: Node, weights: list[TensorEntry]) -> int:
    """Output rows of a node this splits: `MatMulNBits` (weights, scales, zero points; no
    g_idx or bias) or a float `Gemm` whose weight is stored by output row (transB, no bias).
    0 for any other."""
    if node.op_type == "MatMulNBits" and node.domain == "com.microsoft":
        return node.ints.get("N", 0) if len(node.inputs) <= NBITS_INPUTS else 0
    if node.op_type == "Gemm" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2:
        transposed = node.ints.get("transB", 0) == 1 and node.ints.get("transA", 0) == 0
        return weights[0].shape[0] if transposed and len(weights[0].shape) == 2 else 0
    return 0
