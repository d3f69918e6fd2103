"""Token trees in one pass: the block graphs' attention told each token's position and which
earlier tokens it may see, so one target pass scores every branch of a speculative tree.

ONNX Runtime's `com.microsoft.GroupQueryAttention` takes two optional inputs after cos/sin:
`position_ids` (int64 [B, S], used by its rotary embedding) and `attention_bias` (float
[B, 1, S, total], added to the scores). Packages are exported without them, so the block
graphs are rewritten as they load (at the protobuf wire level: the runtime has no `onnx`
package): the attention node gets the two inputs and the graph two inputs of those names.
Measured on ONNX Runtime 1.2x CPU: with sequential positions and a zero bias the rewritten
graph gives the unrewritten one's outputs bit for bit, for one token and for many; a tree
pass gives each node the outputs of a chain pass over its path, bit for bit. So plain steps
keep their arithmetic, and tree verification has chain verification's exactness.

The keys/values of a tree pass are written to consecutive slots (node i at slot base + i);
`compact` moves the accepted path's down to consecutive positions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.errors import ConfigError, PackageError
from edge.kv_cache import KVCache
from edge.onnx_wire import encode_varint as _varint
from edge.onnx_wire import len_field as _len_field
from edge.onnx_wire import model_graph, varint
from edge.onnx_wire import raw_fields as _fields

POSITION_IDS = "tree.position_ids"  # int64 [1, S]: each step token's rotary position
ATTENTION_BIAS = "tree.attention_bias"  # float32 [1, 1, S, total]: -inf where a token must not look

MODEL_GRAPH = 7
GRAPH_NODE, GRAPH_INPUT = 1, 11
NODE_INPUT, NODE_OP_TYPE, NODE_ATTRIBUTE, NODE_DOMAIN = 1, 4, 5, 7
ATTR_NAME, ATTR_INT = 1, 3
GQA_INPUTS = 9  # query, key, value, past_key, past_value, seqlens_k, total, cos, sin
INT64, FLOAT = 7, 1


def add_tree_inputs(model: bytes, label: str) -> bytes:
    """`model` with `POSITION_IDS` and `ATTENTION_BIAS` fed to its GroupQueryAttention node.

    Refused (PackageError naming `label`) where positions cannot reach the rotation: no such
    node, rotation computed outside it (Gemma 3's sliding layers), or a sliding window."""
    try:
        fields, graph = model_graph(model)
    except PackageError as exc:
        raise PackageError(f"{label}: {exc}") from None
    header = [f.raw for f in fields]
    out, rewritten = [], 0
    for field in _fields(graph):
        if field.number == GRAPH_NODE and _is_attention(field.payload):
            _check_attention(field.payload, label)
            extra = _len_field(NODE_INPUT, POSITION_IDS.encode())
            extra += _len_field(NODE_INPUT, ATTENTION_BIAS.encode())
            out.append(_len_field(GRAPH_NODE, field.payload + extra))
            rewritten += 1
        else:
            out.append(field.raw)
    if rewritten != 1:
        raise PackageError(
            f"{label}: tree verification needs exactly one GroupQueryAttention node per block, "
            f"found {rewritten}"
        )
    out.append(_len_field(GRAPH_INPUT, _value_info(POSITION_IDS, INT64, [1, "tree_S"])))
    out.append(
        _len_field(GRAPH_INPUT, _value_info(ATTENTION_BIAS, FLOAT, [1, 1, "tree_S", "tree_T"]))
    )
    return b"".join(header) + _len_field(MODEL_GRAPH, b"".join(out))


def _node_strings(node: bytes, number: int) -> list[str]:
    return [f.payload.decode("utf-8", "replace") for f in _fields(node) if f.number == number]


def _is_attention(node: bytes) -> bool:
    return _node_strings(node, NODE_OP_TYPE) == ["GroupQueryAttention"] and _node_strings(
        node, NODE_DOMAIN
    ) == ["com.microsoft"]


def _int_attributes(node: bytes) -> dict[str, int]:
    found = {}
    for field in _fields(node):
        if field.number != NODE_ATTRIBUTE:
            continue
        name, value = "", None
        for sub in _fields(field.payload):
            if sub.number == ATTR_NAME:
                name = sub.payload.decode("utf-8", "replace")
            elif sub.number == ATTR_INT:
                value = varint(sub.raw, 1)[0]
        if value is not None:
            found[name] = value
    return found


def _check_attention(node: bytes, label: str) -> None:
    inputs = _node_strings(node, NODE_INPUT)
    attributes = _int_attributes(node)
    why = (
        f"its attention takes {len(inputs)} inputs, not the {GQA_INPUTS} up to its rope tables"
        if len(inputs) != GQA_INPUTS
        else "its keys are rotated outside the attention op (a layer-specific rope base)"
        if attributes.get("do_rotary", 0) != 1
        else "it attends over a sliding window"
        if attributes.get("local_window_size", -1) not in (-1, (1 << 64) - 1)
        else ""
    )
    if why:
        raise PackageError(f"{label} cannot verify token trees: {why}")


def _value_info(name: str, elem_type: int, dims: Sequence[int | str]) -> bytes:
    """A ValueInfoProto: name, tensor type, shape (ints fixed, strings symbolic)."""
    dim_fields = b"".join(
        _len_field(
            1,
            bytes([1 << 3]) + _varint(d) if isinstance(d, int) else _len_field(2, d.encode()),
        )
        for d in dims
    )
    tensor = bytes([1 << 3]) + _varint(elem_type) + _len_field(2, dim_fields)
    return _len_field(1, name.encode()) + _len_field(2, _len_field(1, tensor))


def check_parents(parents: Sequence[int], n: int) -> np.ndarray:
    """`parents` as int64 [n]: node 0 the root (-1), every other node's parent earlier."""
    array = np.asarray(parents, np.int64).reshape(-1)
    if len(array) != n:
        raise ValueError(f"{len(array)} parents for {n} tree tokens")
    if n and array[0] != -1:
        raise ValueError(f"the tree's first token is its root (parent -1), got {array[0]}")
    if np.any((array[1:] < 0) | (array[1:] >= np.arange(1, n))):
        raise ValueError("every tree token's parent must be an earlier token")
    return array


class TreeFeed:
    """The two inputs of every step of an engine whose graphs were rewritten: sequential
    positions and a zero bias for ordinary steps, tree positions and mask for a tree pass."""

    def __init__(self, chunk: int, slots: int) -> None:
        self.positions = np.zeros((1, chunk), np.int64)
        # One flat buffer: a step of S tokens over `total` keys views its leading S * total.
        self._bias = np.zeros(chunk * slots, np.float32)
        self._parents: np.ndarray | None = None  # the next step's tree, if it is one

    def plan(self, parents: np.ndarray) -> None:
        self._parents = parents

    def clear(self) -> None:
        self._parents = None

    def inputs(self, position: int, size: int) -> dict[str, np.ndarray]:
        """Bound per step: the bias's shape follows the cache length."""
        total = position + size
        bias = self._bias[: size * total].reshape(1, 1, size, total)
        bias.fill(0.0)
        positions = self.positions[:, :size]
        positions[0] = np.arange(position, total)
        parents = self._parents
        if parents is not None:  # pads after the tree keep their sequential rows
            n = len(parents)
            seen = np.eye(n, dtype=bool)  # seen[i, j]: node j is node i or an ancestor of it
            depth = np.zeros(n, np.int64)
            for i in range(1, n):
                seen[i] |= seen[parents[i]]
                depth[i] = depth[parents[i]] + 1
            bias[0, 0, :n, position : position + n] = np.where(seen, 0.0, -np.inf)
            positions[0, :n] = position + depth
        return {POSITION_IDS: positions, ATTENTION_BIAS: bias}


def compact(cache: KVCache, base: int, path: Sequence[int]) -> None:
    """Keep tree nodes `path` (increasing node indices, root first) of the pass written at
    `base`: their keys/values move to slots base..base+len(path), the rest is forgotten."""
    m = len(path)
    if m == 0 or list(path) != sorted(set(path)) or path[0] != 0:
        raise ValueError(f"a tree path runs from the root down, got {list(path)}")
    if base + path[-1] >= cache.position:
        raise ValueError(
            f"path node {path[-1]} was not fed at {base}: the cache holds {cache.position}"
        )
    if path[-1] != m - 1:  # a prefix of the fed order is in place already
        slots = base + np.asarray(path, np.int64)
        for array in (*cache.keys, *cache.values):
            array[:, :, base : base + m] = array[:, :, slots]  # [1, H_kv, m, D], a copy first
    cache.position = base + m


def require_tree_placement(backends: Sequence[str], static: bool) -> None:
    """Tree verification runs where the rewritten graphs run: ONNX Runtime's CPU backend."""
    if static:
        raise ConfigError(
            "tree verification needs graphs that take any step length; this "
            "package has fixed-shape (NPU) graphs"
        )
    others = sorted(set(backends) - {"ort_cpu"})
    if others:
        raise ConfigError(
            f"tree verification runs on ONNX Runtime's CPU backend (ort_cpu); this placement "
            f"uses {', '.join(others)}"
        )
