"""What each part of a package costs, read from its manifest alone (pure: no I/O).

The planner weighs parts by four things: the bytes of their weights by *kind of tensor* (a
float matrix, a 4-bit MatMulNBits matrix, an embedding table a token only reads one row of...),
because every runtime keeps each kind differently in memory (see `memory.py`); the FLOPs of one
token; the KV-cache bytes one token adds to a block; and whether the part ships the fixed-shape
int8 graphs an NPU compiles.

>>> costs = model_costs(manifest)  # doctest: +SKIP
>>> costs.parts[1].flops_per_token, costs.parts[1].kv_bytes_per_token
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edge.errors import PackageError
from edge.format import (
    INT8_ROWS_SUFFIXES,
    PREFILL_INT8_SUFFIXES,
    Manifest,
    ModelSpec,
    PartEntry,
    TensorEntry,
)

# Tensor classes: how a runtime holds and reads a tensor depends on which of these it is.
GATHER_F32 = "gather_f32"  # float embedding table: a token reads one row
GATHER_Q = "gather_q"  # GatherBlockQuantized table (+ its scales)
MATMUL_F32 = "matmul_f32"  # float matrix of a MatMul (every byte read per token)
NBITS4 = "nbits4"  # MatMulNBits with <= 4 bits (data + scales + zero points)
NBITS8 = "nbits8"  # MatMulNBits with 5..8 bits
PREFILL_INT8 = "prefill_int8"  # int8 rows of the optional prefill graphs (MatMulInteger)
INT8_ROWS = "int8_rows"  # a w8a8 package's int8 rows (MatMulInteger), read by every step
QDQ_INT8 = "qdq_int8"  # static int8 rows behind DequantizeLinear (NPU packages)
OTHER = "other"  # norms, biases: small
CLASSES = (
    GATHER_F32,
    GATHER_Q,
    MATMUL_F32,
    NBITS4,
    NBITS8,
    PREFILL_INT8,
    INT8_ROWS,
    QDQ_INT8,
    OTHER,
)
# Read in full by every decode step (a gather table is not: one row per token).
MATMUL_CLASSES = frozenset({MATMUL_F32, NBITS4, NBITS8, INT8_ROWS, QDQ_INT8})

AUX_SUFFIXES = (".scales", ".zero_points")  # a quantized matrix's side tensors
_GATHER_MARKERS = (".gather", ".gather_scales", ".gather_zero_points")
_FLOAT_DTYPES = frozenset({"float32", "float16", "bfloat16"})


def _nbits_class(name: str) -> str | None:
    """NBITS4/NBITS8 for a `<weight>.qN` data tensor, else None."""
    stem, _, suffix = name.rpartition(".")
    if stem and suffix.startswith("q") and suffix[1:].isdigit():
        return NBITS4 if int(suffix[1:]) <= 4 else NBITS8
    return None


def tensor_class(part: PartEntry, tensor: TensorEntry, nbits: Mapping[str, str]) -> str:
    """The class of one tensor; `nbits` maps a MatMulNBits weight's stem to its class, so that
    its `.scales` and `.zero_points` count with it."""
    name = tensor.name
    if name.endswith(PREFILL_INT8_SUFFIXES):
        return PREFILL_INT8
    if name.endswith(INT8_ROWS_SUFFIXES):
        return INT8_ROWS
    if any(name.endswith(marker) for marker in _GATHER_MARKERS):
        return GATHER_Q
    data = _nbits_class(name)
    if data is not None:
        return data
    for suffix in AUX_SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in nbits:
            return nbits[name[: -len(suffix)]]
    if name.endswith((".int8", ".scale")) and part.static_graphs:
        return QDQ_INT8
    if tensor.dtype in _FLOAT_DTYPES and len(tensor.shape) == 2:
        return GATHER_F32 if part.kind == "embed" else MATMUL_F32
    return OTHER


@dataclass(frozen=True)
class PartCost:
    """One part's costs. `tensors` are (name, file, offset, class, bytes), the identity a
    runtime maps or copies by; `class_bytes` sums them per class."""

    index: int
    name: str
    kind: str
    tensors: tuple[tuple[str, str, int, str, int], ...]
    flops_per_token: int  # matmuls + attention at an empty cache (attention added per context)
    attention_flops_per_context_token: int  # extra FLOPs per token per token already cached
    kv_bytes_per_token: int
    static_steps: tuple[int, ...]  # fixed step lengths of its NPU graphs; () if none
    has_prefill_graph: bool
    # A head that computes every position's logits (standard-op static graphs), not only the
    # positions asked for: a prompt step costs it a whole step's worth.
    logits_every_position: bool = False
    class_bytes: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sums: dict[str, int] = {}
        for _, _, _, cls, nbytes in self.tensors:
            sums[cls] = sums.get(cls, 0) + nbytes
        object.__setattr__(self, "class_bytes", MappingProxyType(sums))

    @property
    def weight_bytes(self) -> int:
        return sum(t[4] for t in self.tensors)

    @property
    def decode_bytes(self) -> int:
        """Bytes one decode step reads in full (matmul weights; not gather tables)."""
        return sum(b for c, b in self.class_bytes.items() if c in MATMUL_CLASSES)

    @property
    def static_int8(self) -> bool:
        # fixed shapes and int8 weights (a `static-fp32` package has the shapes only)
        return bool(self.static_steps) and QDQ_INT8 in self.class_bytes


@dataclass(frozen=True)
class ModelCosts:
    """A package's parts in manifest order, plus what the whole process pays once."""

    spec: ModelSpec
    parts: tuple[PartCost, ...]
    tokenizer_bytes: int
    static_context: int | None  # fixed KV length of an NPU (static) package
    label: str

    @property
    def hidden_bytes_per_token(self) -> int:
        """float32 activations crossing a segment boundary, per token."""
        return self.spec.hidden_size * 4

    @property
    def num_parts(self) -> int:
        return len(self.parts)

    @property
    def weight_bytes(self) -> int:
        """Every tensor once, however many parts read it (a tied embedding is the head too)."""
        unique = {(t[1], t[2]): t[4] for p in self.parts for t in p.tensors}
        return sum(unique.values())


def _block_flops(spec: ModelSpec) -> tuple[int, int]:
    """(FLOPs of one token's matmuls, attention FLOPs per cached token) of one block."""
    h, d = spec.hidden_size, spec.head_dim
    q, kv = spec.num_heads * d, spec.num_kv_heads * d
    matmuls = h * (q + 2 * kv) + q * h + h * 2 * spec.intermediate_size + spec.intermediate_size * h
    # Q.K^T and P.V: 2 multiply-adds per head dimension per cached position.
    return 2 * matmuls, 4 * spec.num_heads * d


def part_cost(
    index: int, part: PartEntry, spec: ModelSpec, logits_every_position: bool = False
) -> PartCost:
    nbits = {
        t.name.rpartition(".")[0]: cls
        for t in part.tensors
        if (cls := _nbits_class(t.name)) is not None
    }
    tensors = tuple(
        (t.name, t.file, t.offset, tensor_class(part, t, nbits), t.nbytes) for t in part.tensors
    )
    flops, attention, kv = 0, 0, 0
    if part.kind == "block":
        flops, attention = _block_flops(spec)
        kv = 2 * spec.num_kv_heads * spec.head_dim * 4  # float32 keys and values
    elif part.kind == "head":
        flops = 2 * spec.hidden_size * spec.vocab_size
    return PartCost(
        index,
        part.name,
        part.kind,
        tensors,
        flops,
        attention,
        kv,
        tuple(sorted(s for s, _ in part.static_graphs)),
        part.prefill_graph is not None,
        logits_every_position and part.kind == "head",
    )


def tokenizer_bytes(manifest: Manifest) -> int:
    """The tokenizer file's size, from the manifest's file list (no I/O)."""
    for entry in manifest.files:
        if entry.path == manifest.tokenizer.file:
            return entry.size
    raise PackageError(f"the manifest lists no size for its tokenizer {manifest.tokenizer.file}")


def model_costs(manifest: Manifest) -> ModelCosts:
    """Costs of every part of `manifest`, in its order (embed, blocks, head)."""
    spec = manifest.spec
    if not manifest.parts or manifest.parts[0].kind != "embed" or manifest.parts[-1].kind != "head":
        raise PackageError(
            "a package's parts must run embed, blocks..., head; got "
            f"{[p.name for p in manifest.parts]}"
        )
    static = manifest.quant.static
    scheme = manifest.quant.scheme
    label = (
        f"{spec.architecture} {spec.num_layers} layers, hidden {spec.hidden_size}, "
        f"vocab {spec.vocab_size}, {scheme}"
    )
    return ModelCosts(
        spec,
        tuple(
            part_cost(i, p, spec, static is not None and static.ops == "standard")
            for i, p in enumerate(manifest.parts)
        ),
        tokenizer_bytes(manifest),
        static.max_context if static else None,
        label,
    )
