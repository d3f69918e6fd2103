"""The edge package: the on-disk contract between exporters and every runtime.

A package is a directory holding `manifest.json`, one ONNX graph per part (`embed`, `block.N`,
`head`), one weight file per part with tensors at aligned offsets (so a part is one contiguous
read and each tensor is page-aligned for mmap), and `tokenizer.json`. This module is a leaf: it
imports only the standard library and numpy, so every runtime (a Raspberry Pi included) can read it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import FormatVersionError, PackageError
from edge.quant_record import QuantizationInfo, quantization_info
from edge.validate import check_int, check_name, check_type

FORMAT_NAME = "edge-package"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
# Page (and Windows allocation-granularity) alignment: a tensor can be mmapped in place.
TENSOR_ALIGNMENT = 64 * 1024

# dtype name -> (numpy storage dtype, bits per element). int4/uint4 pack two values per byte
# (low nibble first), the layout ONNX Runtime's MatMulNBits and GGUF Q4 blocks use.
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "float32": (np.dtype(np.float32), 32),
    "float16": (np.dtype(np.float16), 16),
    "bfloat16": (np.dtype(np.uint16), 16),
    "int64": (np.dtype(np.int64), 64),
    "int32": (np.dtype(np.int32), 32),
    "int8": (np.dtype(np.int8), 8),
    "uint8": (np.dtype(np.uint8), 8),
    "int4": (np.dtype(np.uint8), 4),
    "uint4": (np.dtype(np.uint8), 4),
}

PART_KINDS = ("embed", "block", "head")
# A manifest is a few hundred KiB even for large models; a bigger one is not ours.
MAX_MANIFEST_BYTES = 64 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes a tensor occupies on disk; packed 4-bit tensors round each row up to whole bytes."""
    _, bits = DTYPES[dtype]
    if bits >= 8 or not shape:
        return math.prod(shape) * bits // 8
    rows = math.prod(shape[:-1]) if len(shape) > 1 else 1
    return rows * ((shape[-1] * bits + 7) // 8)


def storage_shape(entry: TensorEntry) -> tuple[int, ...]:
    """The shape `entry` has in memory: packed 4-bit types hold two values a byte."""
    _, bits = DTYPES[entry.dtype]
    if bits >= 8 or not entry.shape:
        return tuple(entry.shape)
    return (*entry.shape[:-1], (entry.shape[-1] * bits + 7) // 8)


ACTIVATIONS = ("silu", "gelu_tanh")  # ModelSpec.activation


@dataclass(frozen=True)
class ModelSpec:
    """Architecture hyper-parameters: everything a runtime needs besides the weights."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    # Block features beyond Llama's (see edge/architectures.py); the defaults are Llama's, so
    # manifests written before these fields existed load unchanged.
    qk_norm: bool = False  # RMSNorm [D] on each query and key head before rope
    sandwich_norms: bool = False  # RMSNorm on the attention and FFN outputs before the residual
    activation: str = "silu"  # of the gate: "silu" or "gelu_tanh"
    embedding_scale: float = 1.0  # embedding rows are multiplied by this (Gemma: sqrt(H))
    attention_scale: float = 0.0  # softmax scale; 0 means head_dim ** -0.5
    sliding_window: int = 0  # keys a sliding layer's query sees (itself included); 0: none
    sliding_layers: tuple[int, ...] = ()  # indices of the sliding-window layers
    rope_local_theta: float = 0.0  # rope base of the sliding layers; 0 means rope_theta

    def __post_init__(self) -> None:
        if isinstance(self.sliding_layers, list):  # as JSON gives it back
            object.__setattr__(self, "sliding_layers", tuple(self.sliding_layers))
        check_type(self.architecture, str, "ModelSpec.architecture")
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "max_position_embeddings",
        ):
            check_int(getattr(self, name), f"ModelSpec.{name}", minimum=1)
        for name in ("rope_theta", "rms_norm_eps"):
            value = getattr(self, name)
            check_type(value, (int, float), f"ModelSpec.{name}")
            if not (math.isfinite(value) and value > 0):
                raise PackageError(f"ModelSpec.{name} must be a positive number, got {value}")
        for name in ("tie_word_embeddings", "attention_bias", "qk_norm", "sandwich_norms"):
            check_type(getattr(self, name), bool, f"ModelSpec.{name}")
        if self.activation not in ACTIVATIONS:
            raise PackageError(
                f"ModelSpec.activation={self.activation!r}; known: {list(ACTIVATIONS)}"
            )
        for name in ("embedding_scale", "attention_scale", "rope_local_theta"):
            value = getattr(self, name)
            check_type(value, (int, float), f"ModelSpec.{name}")
            if not (math.isfinite(value) and value >= 0):
                raise PackageError(f"ModelSpec.{name} must be a number >= 0, got {value}")
        check_int(self.sliding_window, "ModelSpec.sliding_window")
        check_type(self.sliding_layers, tuple, "ModelSpec.sliding_layers")
        for layer in self.sliding_layers:
            check_int(layer, "ModelSpec.sliding_layers[]")
            if layer >= self.num_layers:
                raise PackageError(
                    f"ModelSpec.sliding_layers names layer {layer} of {self.num_layers}"
                )
        if self.sliding_layers and not self.sliding_window:
            raise PackageError("ModelSpec.sliding_layers needs a sliding_window > 0")
        if self.num_heads % self.num_kv_heads:
            raise PackageError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                f"({self.num_kv_heads})"
            )


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor's bytes live: `file` relative to the package, `offset` aligned."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: str
    offset: int
    nbytes: int

    def __post_init__(self) -> None:
        check_type(self.name, str, "a tensor name")
        where = f"tensor {self.name[:80]!r}"
        check_type(self.shape, tuple, f"{where}: shape")
        for d in self.shape:
            check_int(d, f"{where}: a dimension")
        check_int(self.offset, f"{where}: offset")
        check_int(self.nbytes, f"{where}: nbytes")
        check_name(self.file, f"{where}: file")
        if not isinstance(self.dtype, str) or self.dtype not in DTYPES:
            raise PackageError(
                f"tensor {self.name}: unknown dtype {self.dtype!r}; known: {sorted(DTYPES)}"
            )
        if tensor_nbytes(self.dtype, tuple(self.shape)) != self.nbytes:
            raise PackageError(
                f"tensor {self.name}: {self.nbytes} bytes do not match "
                f"{self.dtype}{list(self.shape)}"
            )


@dataclass(frozen=True)
class PartEntry:
    """A unit of placement: its graph file, the tensors it reads, and its graph's interface."""

    name: str
    kind: str
    graph: str
    tensors: tuple[TensorEntry, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    block_index: int | None = None
    # Fixed-shape graphs by step length (NPU packages); empty when `graph` takes any length.
    static_graphs: tuple[tuple[int, str], ...] = ()
    # Optional graph for multi-token steps (prefill) with kernels that win there.
    prefill_graph: str | None = None

    def __post_init__(self) -> None:
        check_type(self.name, str, "a part name")
        where = f"part {self.name[:80]!r}"
        if self.kind not in PART_KINDS:
            raise PackageError(f"{where}: kind {self.kind!r:.80}; known: {list(PART_KINDS)}")
        check_name(self.graph, f"{where}: graph")
        if self.prefill_graph is not None:
            check_name(self.prefill_graph, f"{where}: prefill_graph")
        for step, graph in self.static_graphs:
            check_int(step, f"{where}: a static graph's step", minimum=1)
            check_name(graph, f"{where}: static graph")
        for t in self.tensors:
            check_type(t, TensorEntry, f"{where}: a tensor")
        for value in (*self.inputs, *self.outputs):
            check_type(value, str, f"{where}: an input or output name")
        if self.block_index is not None:
            check_int(self.block_index, f"{where}: block_index")

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def graph_files(self) -> tuple[str, ...]:
        """Every graph the part ships."""
        extra = (self.prefill_graph,) if self.prefill_graph else ()
        return (self.graph, *extra, *(f for _, f in self.static_graphs))


@dataclass(frozen=True)
class TokenizerInfo:
    """The tokenizer file and the conventions generation needs around it."""

    file: str
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None = None

    def __post_init__(self) -> None:
        check_name(self.file, "tokenizer file")
        for name in ("chat_template", "bos_token", "eos_token"):
            check_type(getattr(self, name), (str, type(None)), f"tokenizer.{name}")
        for token in self.eos_token_ids:
            check_int(token, "tokenizer.eos_token_ids")
        if self.bos_token_id is not None:
            check_int(self.bos_token_id, "tokenizer.bos_token_id")


@dataclass(frozen=True)
class FileEntry:
    """One file of the package: everything a run reads is listed here and hashed."""

    path: str
    size: int
    sha256: str

    def __post_init__(self) -> None:
        check_name(self.path, "files[]")
        check_int(self.size, f"files[] {self.path}: size")
        if not isinstance(self.sha256, str) or not _SHA256.fullmatch(self.sha256):
            raise PackageError(f"files[] {self.path}: sha256 must be 64 lowercase hex digits")


@dataclass(frozen=True)
class Manifest:
    """Everything about a package except the bytes; written as `manifest.json`."""

    spec: ModelSpec
    parts: tuple[PartEntry, ...]
    tokenizer: TokenizerInfo
    files: tuple[FileEntry, ...]
    exporter: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        check_type(self.spec, ModelSpec, "spec")
        check_type(self.tokenizer, TokenizerInfo, "tokenizer")
        for part in self.parts:
            check_type(part, PartEntry, "a part")
        for entry in self.files:
            check_type(entry, FileEntry, "files[]")
        check_type(self.exporter, dict, "exporter")
        # Typed once here, so a malformed record is a PackageError at load, not a crash later.
        object.__setattr__(self, "_quant", quantization_info(self.quantization))

    @property
    def quant(self) -> QuantizationInfo:
        """The quantization record, typed (`quantization_info`)."""
        return self._quant  # type: ignore[attr-defined]

    def part(self, name: str) -> PartEntry:
        for p in self.parts:
            if p.name == name:
                return p
        raise PackageError(f"package has no part {name!r}; parts: {[p.name for p in self.parts]}")

    @property
    def blocks(self) -> tuple[PartEntry, ...]:
        return tuple(p for p in self.parts if p.kind == "block")


# ---- graph interface names: the contract between exporters' graphs and the engine ----------


def hidden_name(index: int) -> str:
    """Activations entering block `index` (`hidden.{num_layers}` enters the head)."""
    return f"hidden.{index}"


def past_key_name(index: int) -> str:
    return f"past_key.{index}"


def past_value_name(index: int) -> str:
    return f"past_value.{index}"


def present_key_name(index: int) -> str:
    return f"present_key.{index}"


def present_value_name(index: int) -> str:
    return f"present_value.{index}"


def new_key_name(index: int) -> str:
    """The step's keys [1, H_kv, S, D] of a standard-op static block, which the engine writes
    into the cache (those graphs do not update it themselves)."""
    return f"new_key.{index}"


def new_value_name(index: int) -> str:
    return f"new_value.{index}"


INPUT_IDS = "input_ids"  # int64 [B, S]
SEQLENS_K = "seqlens_k"  # int32 [B]: total tokens in the cache after this step, minus one
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"  # int32 scalar
COS_CACHE = "cos_cache"  # float32 [max_context, head_dim / 2]
SIN_CACHE = "sin_cache"
LOGITS_INDEX = "logits_index"  # int64 [K]: positions of this step whose logits are wanted
LOGITS = "logits"  # float32 [B, K, vocab]
# Inputs of standard-op static blocks, filled by the engine each step (edge.static_steps):
STEP_MASK = "step_mask"  # float32 [S, max_context + S], additive: 0 visible, -30000 hidden
STEP_COS = "step_cos"  # float32 [S, head_dim / 2]: the rope rows of this step's positions
STEP_SIN = "step_sin"

# Tensor name suffixes of int8-row matmul weights (int8 [K, N] + float32 scale [N], run by
# MatMulInteger on activations quantized per token): a "w8a8" package's decode weights, and the
# optional prefill graphs' copies beside block-quantized decode weights.
INT8_ROWS_SUFFIXES = (".int8_rows", ".int8_rows_scale")
PREFILL_INT8_SUFFIXES = (".prefill_int8", ".prefill_scale")


# ---- reading and writing ----------------------------------------------------------------------


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(data) - known
    if unknown:
        raise PackageError(f"{cls.__name__} has unknown fields {sorted(unknown)}")
    return cls(**data)


def manifest_to_json(manifest: Manifest) -> str:
    body = {"format": FORMAT_NAME, **asdict(manifest)}
    # Spec fields at their defaults (Llama's block) are left out, so an edge that predates an
    # architecture feature still reads every package that does not use it.
    defaults = {f.name: f.default for f in fields(ModelSpec) if f.default is not MISSING}
    body["spec"] = {k: v for k, v in body["spec"].items() if k not in defaults or v != defaults[k]}
    return json.dumps(body, indent=1, sort_keys=False) + "\n"


def manifest_from_json(text: str, where: str = MANIFEST_FILE) -> Manifest:
    """Parse and type-check a manifest; `PackageError` for anything that is not one."""
    try:
        data = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, and integers past Python's digit limit
        raise PackageError(f"{where} is not valid JSON: {exc!s:.200}") from None
    except RecursionError:
        raise PackageError(f"{where} is nested too deeply to be an edge manifest") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
        raise PackageError(f"{where} is not an edge package manifest")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise PackageError(f"{where} has no integer format_version")
    if version > FORMAT_VERSION:
        raise FormatVersionError(
            f"{where} has format version {version}, this edge reads up to {FORMAT_VERSION}: "
            "upgrade edge (pip install -U edge) or re-export the model with this version"
        )
    try:
        parts = tuple(
            _from_dict(
                PartEntry,
                {
                    **p,
                    "tensors": tuple(
                        _from_dict(TensorEntry, {**t, "shape": tuple(t["shape"])})
                        for t in p["tensors"]
                    ),
                    "inputs": tuple(p["inputs"]),
                    "outputs": tuple(p["outputs"]),
                    "static_graphs": tuple((s, f) for s, f in p.get("static_graphs", ())),
                },
            )
            for p in data["parts"]
        )
        tok = data["tokenizer"]
        return Manifest(
            spec=_from_dict(ModelSpec, data["spec"]),
            parts=parts,
            tokenizer=_from_dict(
                TokenizerInfo, {**tok, "eos_token_ids": tuple(tok["eos_token_ids"])}
            ),
            files=tuple(_from_dict(FileEntry, f) for f in data["files"]),
            exporter=data.get("exporter", {}),
            quantization=data.get("quantization"),
            format_version=version,
        )
    except PackageError as exc:
        raise PackageError(f"{where}: {exc}") from None
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
        raise PackageError(f"{where} is malformed: missing or wrong field {exc!s:.200}") from None


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Read and validate a package's manifest; `PackageError` if `root` is not a package."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise PackageError(f"{root} is not a directory, so not an edge package")
    if not path.is_file():
        raise PackageError(f"{root} is not an edge package: it has no {MANIFEST_FILE}")
    with open(path, "rb") as fh:
        return manifest_from_bytes(fh.read(MAX_MANIFEST_BYTES + 1), str(path))


def manifest_from_bytes(raw: bytes, where: str = MANIFEST_FILE) -> Manifest:
    """`manifest_from_json` for the raw bytes of a manifest file, size and encoding checked."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise PackageError(
            f"{where} is over {MAX_MANIFEST_BYTES >> 20} MiB, so not an edge manifest"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PackageError(f"{where} is not UTF-8 text, so not an edge manifest") from exc
    return manifest_from_json(text, where)


def write_manifest(root: str | os.PathLike[str], manifest: Manifest) -> None:
    Path(root, MANIFEST_FILE).write_text(manifest_to_json(manifest), encoding="utf-8")


def sha256_file(path: str | os.PathLike[str], chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def describe_file(root: Path, relative: str) -> FileEntry:
    path = root / relative
    return FileEntry(relative, path.stat().st_size, sha256_file(path))


class WeightFileWriter:
    """Appends tensors to one weight file at aligned offsets and returns their entries."""

    def __init__(self, root: Path, relative: str) -> None:
        self.relative = relative
        self._fh = open(root / relative, "wb")  # noqa: SIM115 - closed in close()

    def _align(self) -> int:
        offset = self._fh.tell()
        pad = (-offset) % TENSOR_ALIGNMENT
        if pad:
            self._fh.write(b"\0" * pad)
        return offset + pad

    def add(
        self,
        name: str,
        array: np.ndarray,
        dtype: str | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> TensorEntry:
        """Write `array`; pass `dtype`/`shape` for packed types whose storage differs."""
        dtype = dtype or str(array.dtype)
        shape = tuple(int(s) for s in (shape or array.shape))
        offset = self._align()
        data = np.ascontiguousarray(array)
        self._fh.write(memoryview(data).cast("B"))
        return TensorEntry(name, dtype, shape, self.relative, offset, data.nbytes)

    def add_chunks(self, name: str, dtype: str, shape: tuple[int, ...], chunks: Any) -> TensorEntry:
        """Write a tensor given as an iterable of row chunks, so it never sits whole in memory."""
        offset = self._align()
        written = 0
        for chunk in chunks:
            data = np.ascontiguousarray(chunk)
            self._fh.write(memoryview(data).cast("B"))
            written += data.nbytes
        return TensorEntry(name, dtype, tuple(shape), self.relative, offset, written)

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> WeightFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
