"""The edge package: the on-disk contract between exporters and every runtime.

A package is a directory holding `manifest.json`, one ONNX graph per part (`embed`, `block.N`,
`head`), one weight file per part with tensors at aligned offsets (so a part is one contiguous
read and each tensor is page-aligned for mmap), and `tokenizer.json`. This module is a leaf: it
imports only the standard library and numpy, so every runtime (a Raspberry Pi included) can read it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import FormatVersionError, IntegrityError, PackageError

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


def tensor_nbytes(dtype: str, shape: tuple[int, ...]) -> int:
    """Bytes a tensor occupies on disk; packed 4-bit tensors round each row up to whole bytes."""
    _, bits = DTYPES[dtype]
    if bits >= 8 or not shape:
        return int(np.prod(shape, dtype=np.int64)) * bits // 8
    rows = int(np.prod(shape[:-1], dtype=np.int64)) if len(shape) > 1 else 1
    return rows * ((shape[-1] * bits + 7) // 8)


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

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads",
                     "num_kv_heads", "head_dim", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise PackageError(f"ModelSpec.{name} must be positive, got {getattr(self, name)}")
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
        if any(d < 0 for d in self.shape) or self.offset < 0:
            raise PackageError(f"tensor {self.name}: negative dimension or offset "
                               f"(shape {list(self.shape)}, offset {self.offset})")
        if self.dtype not in DTYPES:
            raise PackageError(f"tensor {self.name}: unknown dtype {self.dtype!r}; "
                               f"known: {sorted(DTYPES)}")
        if tensor_nbytes(self.dtype, tuple(self.shape)) != self.nbytes:
            raise PackageError(f"tensor {self.name}: {self.nbytes} bytes do not match "
                               f"{self.dtype}{list(self.shape)}")


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

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


@dataclass(frozen=True)
class TokenizerInfo:
    """The tokenizer file and the conventions generation needs around it."""

    file: str
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None = None


@dataclass(frozen=True)
class FileEntry:
    path: str
    size: int
    sha256: str


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


INPUT_IDS = "input_ids"  # int64 [B, S]
SEQLENS_K = "seqlens_k"  # int32 [B]: total tokens in the cache after this step, minus one
TOTAL_SEQUENCE_LENGTH = "total_sequence_length"  # int32 scalar
COS_CACHE = "cos_cache"  # float32 [max_context, head_dim / 2]
SIN_CACHE = "sin_cache"
LOGITS_INDEX = "logits_index"  # int64 [K]: positions of this step whose logits are wanted
LOGITS = "logits"  # float32 [B, K, vocab]

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
    return json.dumps(body, indent=1, sort_keys=False) + "\n"


def manifest_from_json(text: str, where: str = MANIFEST_FILE) -> Manifest:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PackageError(f"{where} is not valid JSON: {exc}") from exc
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
            _from_dict(PartEntry, {
                **p,
                "tensors": tuple(
                    _from_dict(TensorEntry, {**t, "shape": tuple(t["shape"])}) for t in p["tensors"]
                ),
                "inputs": tuple(p["inputs"]),
                "outputs": tuple(p["outputs"]),
                "static_graphs": tuple((int(s), str(f)) for s, f in p.get("static_graphs", ())),
            })
            for p in data["parts"]
        )
        tok = data["tokenizer"]
        return Manifest(
            spec=_from_dict(ModelSpec, data["spec"]),
            parts=parts,
            tokenizer=_from_dict(TokenizerInfo,
                                 {**tok, "eos_token_ids": tuple(tok["eos_token_ids"])}),
            files=tuple(_from_dict(FileEntry, f) for f in data["files"]),
            exporter=data.get("exporter", {}),
            quantization=data.get("quantization"),
            format_version=version,
        )
    except (KeyError, TypeError) as exc:
        raise PackageError(f"{where} is malformed: missing or wrong field {exc}") from exc


def read_manifest(root: str | os.PathLike[str]) -> Manifest:
    """Read and validate a package's manifest; `PackageError` if `root` is not a package."""
    root = Path(root)
    path = root / MANIFEST_FILE
    if not root.is_dir():
        raise PackageError(f"{root} is not a directory, so not an edge package")
    if not path.is_file():
        raise PackageError(f"{root} is not an edge package: it has no {MANIFEST_FILE}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PackageError(f"{path} is not UTF-8 text, so not an edge manifest") from exc
    return manifest_from_json(text, str(path))


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


def verify_files(root: str | os.PathLike[str], manifest: Manifest, *, hashes: bool) -> None:
    """Check every listed file exists with its size, and (if `hashes`) its sha256.

    Sizes are always cheap to check and catch truncation; hashing catches a flipped byte.
    """
    root = Path(root)
    for entry in manifest.files:
        path = root / entry.path
        if not path.is_file():
            raise PackageError(f"package {root} is missing {entry.path}")
        size = path.stat().st_size
        if size != entry.size:
            raise IntegrityError(
                f"{entry.path} in {root} is {size} bytes, the manifest says {entry.size} "
                "(truncated or replaced): re-export the package"
            )
    if hashes:
        for entry in manifest.files:
            actual = sha256_file(root / entry.path)
            if actual != entry.sha256:
                raise IntegrityError(
                    f"{entry.path} in {root} is corrupted: sha256 {actual} differs from the "
                    f"manifest's {entry.sha256}"
                )


def map_tensor(root: str | os.PathLike[str], entry: TensorEntry) -> np.ndarray:
    """A read-only memory map of one tensor (no copy; the OS pages it in on use)."""
    storage, bits = DTYPES[entry.dtype]
    path = Path(root, entry.file)
    if bits >= 8 or not entry.shape:
        return np.memmap(path, dtype=storage, mode="r", offset=entry.offset, shape=entry.shape)
    packed = (*entry.shape[:-1], (entry.shape[-1] * bits + 7) // 8)
    return np.memmap(path, dtype=storage, mode="r", offset=entry.offset, shape=packed)


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

    def add(self, name: str, array: np.ndarray, dtype: str | None = None,
            shape: tuple[int, ...] | None = None) -> TensorEntry:
        """Write `array`; pass `dtype`/`shape` for packed types whose storage differs."""
        dtype = dtype or str(array.dtype)
        shape = tuple(int(s) for s in (shape or array.shape))
        offset = self._align()
        data = np.ascontiguousarray(array)
        self._fh.write(memoryview(data).cast("B"))
        return TensorEntry(name, dtype, shape, self.relative, offset, data.nbytes)

    def add_chunks(self, name: str, dtype: str, shape: tuple[int, ...],
                   chunks: Any) -> TensorEntry:
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
