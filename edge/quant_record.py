"""The manifest's quantization record, typed: what runtimes read of it, checked once at load
(the record itself stays as the exporter wrote it, for provenance)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.errors import PackageError
from edge.validate import check_int, check_type


@dataclass(frozen=True)
class StaticShapes:
    """A fixed-shape (NPU) package: graphs exist for these step lengths and this cache only."""

    chunks: tuple[int, ...]
    max_context: int
    activation_bits: int = 16
    batch: int = 1
    weight_bits: int = 8
    # "contrib": ONNX Runtime's attention and norm ops; "standard": standard ONNX ops only,
    # the KV cache written by the engine (exporters/arch/standard_ops.py)
    ops: str = "contrib"
    # Bits of the standard-op int8 blocks' attention products (queries, keys, values,
    # probabilities); 16 over 8-bit activations is the mixed A8/A16 package. None where the
    # record has none: contrib and float graphs (no quantized attention), and standard ones
    # written before the option, whose attention is at activation_bits
    attention_bits: int | None = None


@dataclass(frozen=True)
class QuantizationInfo:
    """What runtimes read of the manifest's quantization record, typed and checked once at
    load (the record itself stays as the exporter wrote it, for provenance)."""

    scheme: str = "fp32"
    static: StaticShapes | None = None
    # MatMulNBits accuracy_level of each block-quantized matmul role (4: int8 activations)
    accuracy_levels: tuple[int, ...] = ()
    per_token: bool = False  # int8 rows x activations rounded to int8 per token (w8a8)
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)  # per-tensor records


ROLES = ("linear", "head", "embed", "sensitive_config")
STATIC_OPS = ("contrib", "standard")


def quantization_info(record: object) -> QuantizationInfo:
    """The typed view of a manifest's `quantization` record; `PackageError` if malformed."""
    if record is None:
        return QuantizationInfo()
    check_type(record, dict, "quantization")
    scheme = record.get("scheme")
    check_type(scheme, dict, "quantization.scheme")
    check_type(scheme.get("name"), str, "quantization.scheme.name")
    levels, per_token = [], False
    for role in ROLES:
        config = scheme.get(role)
        check_type(config, (dict, type(None)), f"quantization.scheme.{role}")
        if not config:
            continue
        if "kind" in config:
            per_token = per_token or role in ("linear", "head")
        elif "accuracy_level" in config and role != "embed":  # a gather rounds nothing
            check_int(config["accuracy_level"], f"quantization.scheme.{role}.accuracy_level")
            levels.append(config["accuracy_level"])
    tensors = record.get("tensors", {})
    check_type(tensors, dict, "quantization.tensors")
    for name, entry in tensors.items():
        check_type(entry, dict, f"quantization.tensors[{name!r:.80}]")
    return QuantizationInfo(
        scheme["name"], _static_shapes(record.get("static")), tuple(levels), per_token, tensors
    )


def _static_shapes(static: object) -> StaticShapes | None:
    if static is None:
        return None
    check_type(static, dict, "quantization.static")
    chunks = static.get("chunks")
    check_type(chunks, list, "quantization.static.chunks")
    if not chunks:
        raise PackageError("quantization.static.chunks is empty")
    for chunk in chunks:
        check_int(chunk, "quantization.static.chunks[]", minimum=1)
    values = {
        name: static.get(name, default)
        for name, default in (
            ("max_context", None),
            ("activation_bits", 16),
            ("batch", 1),
            ("weight_bits", 8),
        )
    }
    for name, value in values.items():
        check_int(value, f"quantization.static.{name}", minimum=1)
    ops = static.get("ops", "contrib")
    if ops not in STATIC_OPS:
        raise PackageError(f"quantization.static.ops is {ops!r:.40}; one of {list(STATIC_OPS)}")
    attention_bits = static.get("attention_bits")
    if attention_bits is not None:
        check_int(attention_bits, "quantization.static.attention_bits", minimum=1)
    return StaticShapes(tuple(chunks), **values, ops=ops, attention_bits=attention_bits)
