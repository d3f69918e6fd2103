"""A part's tensors grouped into typed weights, by the names the exporter gives them.

The forward passes in this package compute a part from the manifest's `ModelSpec` and these
weights instead of from the part's ONNX graph, so they can run where ONNX Runtime cannot (a GPU
through torch) or read weights ONNX Runtime would have to pre-pack (a streamed block's buffer).
Every array stays what it was handed in as (a memory map, a view into a streaming buffer): this
module only checks shapes and names, it copies nothing.

Names (see exporters/export.py and exporters/linear.py): a float linear is `<name>` as float32
[K, N]; a block-quantized one is `<name>.q4` or `<name>.q8` (MatMulNBits' uint8
[N, n_blocks, block_size * bits / 8]), `<name>.scales` and optionally `<name>.zero_points`; an
int8-row one ("w8a8") is `<name>.int8_rows` (int8 [K, N]) and `<name>.int8_rows_scale`. The
embedding is `token_embd.weight` (float32 [V, H]) or its `GatherBlockQuantized` view
`token_embd.gather` (+ `_scales`, `_zero_points`). The head's output matrix is stored [V, H]
(float) or as MatMulNBits with N = V. Q/K rows are already in Hugging Face's half-rotation order
(the exporter undid llama.cpp's interleaving with `rope_row_order`), so nothing is permuted here.
Which vectors a block holds follows its spec's features (edge/architectures.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from edge import format as fmt
from edge.architectures import DECLARATIONS, QK_NORMS, SANDWICH_NORMS
from edge.errors import UnsupportedModelError
from edge.format import ModelSpec, PartEntry, TensorEntry, storage_shape
from edge.quant_record import QuantizationInfo
from quant.blockwise import QuantizedWeight, n_blocks_of
from quant.config import ALLOWED_BITS, ALLOWED_BLOCK_SIZES

# Every declared architecture: the forwards compute the block features a declaration turns on.
SUPPORTED_ARCHITECTURES = tuple(sorted({d.name for d in DECLARATIONS.values()}))
# Tensors of an optional prefill graph (int8 rows x int8 tokens): a faster kernel for the same
# matmuls, so the decode weights beside them compute the same block and these are not read.
PREFILL_SUFFIXES = fmt.PREFILL_INT8_SUFFIXES


class UnsupportedPartError(UnsupportedModelError):
    """A part this forward cannot compute (static int8, unknown architecture or tensors)."""


class _Matrix:
    """A weight held as a plain [K, N] array (`weight`), with an optional bias [N]."""

    weight: np.ndarray
    bias: np.ndarray | None

    @property
    def K(self) -> int:
        return int(self.weight.shape[0])

    @property
    def N(self) -> int:
        return int(self.weight.shape[1])

    def _check(self, dtype: type) -> None:
        if self.weight.ndim != 2 or self.weight.dtype != dtype:
            raise UnsupportedPartError(
                f"{type(self).__name__}.weight must be {np.dtype(dtype).name} [K, N], got "
                f"{self.weight.dtype} {list(self.weight.shape)}"
            )
        _check_bias(self.bias, self.N)


@dataclass(frozen=True, eq=False)
class FloatWeight(_Matrix):
    """`x @ weight (+ bias)`; weight float32 [K, N], possibly a transposed view of [N, K]."""

    weight: np.ndarray
    bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._check(np.float32)


@dataclass(frozen=True, eq=False)
class NBitsWeight:
    """One `MatMulNBits` weight [K, N] in its packed layout (see quant/blockwise.py)."""

    packed: np.ndarray  # uint8 [N, n_blocks, block_size * bits / 8]
    scales: np.ndarray  # float32 [N * n_blocks]
    zero_points: np.ndarray | None  # uint8 packed per row, float32 [N * n_blocks], or None
    K: int
    N: int
    bits: int
    block_size: int
    bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.quantized()  # validates every layout detail, naming the bad field
        _check_bias(self.bias, self.N)

    def quantized(self) -> QuantizedWeight:
        """The same arrays as quant's `QuantizedWeight` (for `quant.blockwise.dequantize`)."""
        try:
            return QuantizedWeight(
                self.packed,
                self.scales,
                self.zero_points,
                self.K,
                self.N,
                self.bits,
                self.block_size,
            )
        except ValueError as exc:
            raise UnsupportedPartError(f"NBitsWeight K={self.K} N={self.N}: {exc}") from exc


@dataclass(frozen=True, eq=False)
class Int8RowsWeight(_Matrix):
    """int8 [K, N] with one scale per output column, multiplied by `x` rounded to int8 per
    row (scale max|x_row| / 127): ONNX `MatMulInteger` as the "w8a8" graphs run it."""

    weight: np.ndarray  # int8 [K, N]
    scale: np.ndarray  # float32 [N]
    bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        self._check(np.int8)
        if tuple(self.scale.shape) != (self.N,):
            raise UnsupportedPartError(
                f"Int8RowsWeight.scale must be [{self.N}], got {list(self.scale.shape)}"
            )


LinearWeight = FloatWeight | NBitsWeight | Int8RowsWeight


@dataclass(frozen=True, eq=False)
class EmbeddingTable:
    """The token embedding [V, H]: float32 rows, or rows quantized in blocks along H with
    `GatherBlockQuantized`'s layout (packed uint8 [V, row_bytes], scales [V, n_blocks])."""

    rows: np.ndarray
    hidden: int
    scales: np.ndarray | None = None
    zero_points: np.ndarray | None = None
    bits: int | None = None
    block_size: int | None = None

    @property
    def quantized(self) -> bool:
        return self.scales is not None


@dataclass(frozen=True, eq=False)
class EmbedWeights:
    table: EmbeddingTable
    scale: float = 1.0  # rows are multiplied by it: the spec's embedding_scale (Gemma: sqrt(H))


@dataclass(frozen=True, eq=False)
class BlockWeights:
    """One decoder block; `qkv.bias` holds Qwen2's fused Q/K/V bias."""

    index: int
    attn_norm: np.ndarray  # [H]
    ffn_norm: np.ndarray  # [H]
    qkv: LinearWeight  # [H, (H_q + 2 H_kv) * D]
    attn_output: LinearWeight  # [H_q * D, H]
    gate_up: LinearWeight  # [H, 2 F]: gate columns first
    down: LinearWeight  # [F, H]
    q_norm: np.ndarray | None = None  # [D], spec.qk_norm
    k_norm: np.ndarray | None = None  # [D]
    post_attention_norm: np.ndarray | None = None  # [H], spec.sandwich_norms
    post_ffw_norm: np.ndarray | None = None  # [H]

    @property
    def linears(self) -> tuple[LinearWeight, ...]:
        return (self.qkv, self.attn_output, self.gate_up, self.down)


@dataclass(frozen=True, eq=False)
class HeadWeights:
    norm: np.ndarray  # [H]
    output: LinearWeight  # [H, V]


PartWeights = EmbedWeights | BlockWeights | HeadWeights


@dataclass(frozen=True, eq=False)
class ModelWeights:
    """Every part of a package, in order: what a whole-model forward needs."""

    spec: ModelSpec
    embed: EmbedWeights
    blocks: tuple[BlockWeights, ...]
    head: HeadWeights

    def __post_init__(self) -> None:
        if [b.index for b in self.blocks] != list(range(self.spec.num_layers)):
            raise UnsupportedPartError(
                f"expected blocks 0..{self.spec.num_layers - 1}, got "
                f"{[b.index for b in self.blocks]}"
            )


# ---- grouping -----------------------------------------------------------------------------------


def check_spec(spec: ModelSpec) -> None:
    if spec.architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedPartError(
            f"architecture {spec.architecture!r} has no spec forward; "
            f"supported: {list(SUPPORTED_ARCHITECTURES)}"
        )


def part_weights(
    spec: ModelSpec,
    part: PartEntry,
    arrays: Mapping[str, np.ndarray],
    quantization: QuantizationInfo | None = None,
) -> PartWeights:
    """Group `part`'s tensors (looked up by name in `arrays`) into typed weights.

    `quantization` is the manifest's typed record (`Manifest.quant`); it is only needed to tell
    a quantized embedding's bits and block size apart where its shapes leave them ambiguous.
    """
    check_spec(spec)
    names = {t.name for t in part.tensors if not t.name.endswith(PREFILL_SUFFIXES)}
    static = sorted(n for n in names if n.endswith((".int8", ".scale")))
    if static:
        raise UnsupportedPartError(
            f"part {part.name} holds static int8 (QDQ / int8-row) tensors {static[:3]}: such "
            "packages are for NPU compilers; run them with ONNX Runtime, not the spec forward"
        )
    reader = _Reader(part.name, names, arrays)
    if part.kind == "embed":
        weights: PartWeights = EmbedWeights(
            _embedding(spec, reader, quantization or QuantizationInfo()), spec.embedding_scale
        )
    elif part.kind == "block":
        if part.block_index is None:
            raise UnsupportedPartError(f"block part {part.name} has no block_index")
        weights = _block(spec, reader, part.block_index)
    elif part.kind == "head":
        weights = _head(spec, reader)
    else:
        raise UnsupportedPartError(f"part {part.name} has unknown kind {part.kind!r}")
    unread = sorted(names - reader.used)
    if unread:
        raise UnsupportedPartError(
            f"part {part.name} has tensors the spec forward does not know: {unread[:5]}"
        )
    return weights


class _Reader:
    """Looks up a part's tensors, remembering which were used (leftovers are an error)."""

    def __init__(self, part: str, names: set[str], arrays: Mapping[str, np.ndarray]) -> None:
        self.part, self.names, self.arrays, self.used = part, names, arrays, set()

    def has(self, name: str) -> bool:
        return name in self.names

    def get(self, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
        if name not in self.names:
            raise UnsupportedPartError(
                f"part {self.part} lacks tensor {name!r}; it has {sorted(self.names)[:8]}"
            )
        if name not in self.arrays:
            raise UnsupportedPartError(f"no array was given for tensor {name!r} of {self.part}")
        array = self.arrays[name]
        if shape is not None and tuple(array.shape) != shape:
            raise UnsupportedPartError(
                f"tensor {name!r} of {self.part} is {list(array.shape)}, expected {list(shape)}"
            )
        self.used.add(name)
        return array

    def optional(self, name: str) -> np.ndarray | None:
        return self.get(name) if self.has(name) else None


def _linear(
    reader: _Reader, name: str, K: int, N: int, bias: np.ndarray | None = None
) -> LinearWeight:
    """`name` as float32 [K, N], as int8 rows or as MatMulNBits tensors with these K and N."""
    if reader.has(name):
        return FloatWeight(reader.get(name, (K, N)), bias)
    rows, scale = (f"{name}{suffix}" for suffix in fmt.INT8_ROWS_SUFFIXES)
    if reader.has(rows):
        return Int8RowsWeight(reader.get(rows, (K, N)), reader.get(scale, (N,)), bias)
    bits = next((b for b in ALLOWED_BITS if reader.has(f"{name}.q{b}")), None)
    if bits is None:
        reader.get(name)  # raises, naming what the part has
    packed = reader.get(f"{name}.q{bits}")
    if packed.ndim != 3:
        raise UnsupportedPartError(
            f"{name}.q{bits} must be [N, n_blocks, bytes], got {list(packed.shape)}"
        )
    return NBitsWeight(
        packed,
        reader.get(f"{name}.scales"),
        reader.optional(f"{name}.zero_points"),
        K,
        N,
        bits,
        int(packed.shape[2]) * 8 // bits,
        bias,
    )


def _block(spec: ModelSpec, reader: _Reader, i: int) -> BlockWeights:
    h, d, f = spec.hidden_size, spec.head_dim, spec.intermediate_size
    q_width, qkv_width = spec.num_heads * d, (spec.num_heads + 2 * spec.num_kv_heads) * d
    bias = reader.get(f"blk.{i}.attn_qkv.bias", (qkv_width,)) if spec.attention_bias else None
    q_norm, k_norm = (
        (reader.get(f"blk.{i}.{n}", (d,)) for n in QK_NORMS) if spec.qk_norm else (None, None)
    )
    post_attention, post_ffw = (
        (reader.get(f"blk.{i}.{n}", (h,)) for n in SANDWICH_NORMS)
        if spec.sandwich_norms
        else (None, None)
    )
    return BlockWeights(
        index=i,
        attn_norm=reader.get(f"blk.{i}.attn_norm.weight", (h,)),
        ffn_norm=reader.get(f"blk.{i}.ffn_norm.weight", (h,)),
        qkv=_linear(reader, f"blk.{i}.attn_qkv.weight", h, qkv_width, bias),
        attn_output=_linear(reader, f"blk.{i}.attn_output.weight", q_width, h),
        gate_up=_linear(reader, f"blk.{i}.ffn_gate_up.weight", h, 2 * f),
        down=_linear(reader, f"blk.{i}.ffn_down.weight", f, h),
        q_norm=q_norm,
        k_norm=k_norm,
        post_attention_norm=post_attention,
        post_ffw_norm=post_ffw,
    )


def _head(spec: ModelSpec, reader: _Reader) -> HeadWeights:
    h, v = spec.hidden_size, spec.vocab_size
    norm = reader.get("output_norm.weight", (h,))
    candidates = ("output.weight", "token_embd.weight")
    suffixes = ("", ".q4", ".q8", fmt.INT8_ROWS_SUFFIXES[0])
    name = next((n for n in candidates if any(reader.has(f"{n}{s}") for s in suffixes)), None)
    if name is None:
        raise UnsupportedPartError(
            f"head part {reader.part} has no output matrix ({' or '.join(candidates)})"
        )
    if reader.has(name):  # float [V, H]: the graph's Gemm(transB=1), here a transposed view
        return HeadWeights(norm, FloatWeight(reader.get(name, (v, h)).T))
    return HeadWeights(norm, _linear(reader, name, h, v))


def _embedding(spec: ModelSpec, reader: _Reader, quantization: QuantizationInfo) -> EmbeddingTable:
    v, h = spec.vocab_size, spec.hidden_size
    if reader.has("token_embd.weight"):
        return EmbeddingTable(reader.get("token_embd.weight", (v, h)), h)
    rows = reader.get("token_embd.gather")
    scales = reader.get("token_embd.gather_scales")
    zero = reader.optional("token_embd.gather_zero_points")
    if rows.ndim != 2 or scales.ndim != 2 or rows.shape[0] != v or scales.shape[0] != v:
        raise UnsupportedPartError(
            f"token_embd.gather {list(rows.shape)} / gather_scales "
            f"{list(scales.shape)} are not [V={v}, ...] tables"
        )
    record = quantization.tensors.get("token_embd.weight", {})
    bits, block_size = _embedding_layout(h, int(scales.shape[1]), int(rows.shape[1]), record)
    return EmbeddingTable(rows, h, scales, zero, bits, block_size)


def _embedding_layout(
    hidden: int, n_blocks: int, row_bytes: int, record: Mapping[str, Any]
) -> tuple[int, int]:
    """(bits, block_size) of a quantized embedding: from the manifest's record where present,
    checked against the shapes; otherwise the one layout the shapes allow."""
    fits = [
        (b, s)
        for b in ALLOWED_BITS
        for s in ALLOWED_BLOCK_SIZES
        if n_blocks_of(hidden, s) == n_blocks and n_blocks * s * b // 8 == row_bytes
    ]
    if record:
        fits = [f for f in fits if f == (record.get("bits"), record.get("block_size"))]
    if len(fits) != 1:
        raise UnsupportedPartError(
            f"cannot tell the quantized embedding's layout (H={hidden}, {n_blocks} blocks, "
            f"{row_bytes} bytes a row, record {dict(record)}): candidates {fits}"
        )
    return fits[0]


def _check_bias(bias: np.ndarray | None, n: int) -> None:
    if bias is not None and tuple(bias.shape) != (n,):
        raise UnsupportedPartError(f"bias must be [{n}], got {list(bias.shape)}")


# ---- arrays from a package or from buffers ------------------------------------------------------


class PackageTensors(Protocol):
    """An opened package as the forwards read it (`edge.package.Package` is one)."""

    manifest: fmt.Manifest

    def tensor(self, entry: TensorEntry) -> np.ndarray: ...


def map_part(package: PackageTensors, part: PartEntry) -> dict[str, np.ndarray]:
    """Read-only memory maps of a part's tensors from an opened package."""
    return {t.name: package.tensor(t) for t in part.tensors}


def shape_tensors(part: PartEntry) -> dict[str, np.ndarray]:
    """Stand-ins of a part's tensors with their dtypes and shapes but no memory (one zero
    broadcast): enough for `part_weights` to judge a part ahead of time without mapping or
    reading its files."""
    out = {}
    for t in part.tensors:
        storage, _ = fmt.DTYPES[t.dtype]
        out[t.name] = np.broadcast_to(np.zeros((), storage), storage_shape(t))
    return out


def view_tensors(
    part: PartEntry, buffers: Mapping[str, Any], offsets: Mapping[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Zero-copy views of a part's tensors in buffers holding its weight files.

    `buffers[file]` is a bytes-like object holding `file` from byte `offsets[file]` (default 0)
    on, e.g. a streamed block's window buffer; each tensor is viewed at its manifest offset.
    """
    views = {}
    for t in part.tensors:
        if t.file not in buffers:
            raise UnsupportedPartError(f"no buffer for {t.file}, which holds {t.name}")
        start = t.offset - (offsets or {}).get(t.file, 0)
        raw = np.frombuffer(buffers[t.file], np.uint8)
        if start < 0 or start + t.nbytes > raw.size:
            raise UnsupportedPartError(
                f"the buffer of {t.file} ({raw.size} bytes) does not "
                f"hold {t.name} at {start}..{start + t.nbytes}"
            )
        storage, _ = fmt.DTYPES[t.dtype]
        views[t.name] = raw[start : start + t.nbytes].view(storage).reshape(storage_shape(t))
    return views


def load_model_weights(package: PackageTensors) -> ModelWeights:
    """All parts of an opened package (`edge.package.open_package`), memory-mapped."""
    manifest = package.manifest
    spec = manifest.spec

    def load(part: PartEntry) -> PartWeights:
        return part_weights(spec, part, map_part(package, part), manifest.quant)

    embed = [load(p) for p in manifest.parts if p.kind == "embed"]
    heads = [load(p) for p in manifest.parts if p.kind == "head"]
    if len(embed) != 1 or len(heads) != 1:
        raise UnsupportedPartError("a package needs one embed and one head part")
    blocks = sorted((load(p) for p in manifest.blocks), key=lambda b: b.index)
    return ModelWeights(spec, embed[0], tuple(blocks), heads[0])
