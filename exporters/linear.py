"""Linear-layer weights on their way into a package: float32 or block-quantized.

A source hands over each weight with rows = output features (`RowWeight`), either as float32
or, for GGUF Q4_0/Q8_0, already packed for `MatMulNBits` (a lossless repack). Fusing and
permuting rows keeps packed weights packed; `write_linear` then stores float32 as [K, N] for
`MatMul`, or packed blocks for `MatMulNBits`, quantizing only when the source's blocks do not
already match the requested layout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from edge.format import (
    INT8_ROWS_SUFFIXES,
    PREFILL_INT8_SUFFIXES,
    TensorEntry,
    WeightFileWriter,
)
from quant import QuantizedWeight, TokenInt8Config, WeightQuantConfig, dequantize, quantize
from quant.rows import concat_rows, matches, take_rows


@dataclass(frozen=True)
class RowWeight:
    """A linear weight [N, K] (rows = outputs) as the source stores it."""

    source_type: str  # "F32", "BF16", "Q4_0", "Q4_1", ...: recorded in the manifest
    values: np.ndarray | None = None  # float32 [N, K]
    packed: QuantizedWeight | None = None  # lossless repack (rows = N)
    shape: tuple[int, int] | None = None  # (N, K) of a weight known by its shape alone

    @classmethod
    def of_shape(cls, source_type: str, rows: int, columns: int) -> RowWeight:
        """A weight that is never read: a layout-only export (`exporters.layout`) stores
        zeros in the layout the real values would take."""
        return cls(source_type, shape=(rows, columns))

    def fp32(self) -> np.ndarray:
        if self.values is not None:
            return self.values
        if self.shape is not None:  # transposed zeros: `.T` of it is contiguous, not copied
            return np.zeros(self.shape[::-1], np.float32).T
        assert self.packed is not None
        return dequantize(self.packed).T

    @property
    def n_rows(self) -> int:
        if self.shape is not None:
            return self.shape[0]
        return self.values.shape[0] if self.values is not None else self.packed.N

    @property
    def columns(self) -> int:
        if self.shape is not None:
            return self.shape[1]
        return self.values.shape[1] if self.values is not None else self.packed.K


def concat(weights: Sequence[RowWeight]) -> RowWeight:
    """Fuse weights along output rows (Q/K/V, gate/up); stays packed when all are alike."""
    kinds = {w.source_type for w in weights}
    kind = kinds.pop() if len(kinds) == 1 else "+".join(w.source_type for w in weights)
    if any(w.shape is not None for w in weights):  # unread: quantized to the layout asked
        return RowWeight.of_shape(kind, sum(w.n_rows for w in weights), weights[0].columns)
    packed = [w.packed for w in weights]
    if (
        all(p is not None for p in packed)
        and len({(p.bits, p.block_size, p.symmetric, p.K) for p in packed}) == 1
    ):
        return RowWeight(kind, packed=concat_rows(packed))
    return RowWeight(kind, values=np.concatenate([w.fp32() for w in weights]))


def permute(weight: RowWeight, rows: np.ndarray) -> RowWeight:
    if weight.shape is not None:
        return weight
    if weight.packed is not None:
        return RowWeight(weight.source_type, packed=take_rows(weight.packed, rows))
    return RowWeight(weight.source_type, values=weight.values[rows])


@dataclass(frozen=True)
class FloatLinear:
    weight: TensorEntry  # float32 [K, N]


@dataclass(frozen=True)
class QuantLinear:
    """Entries and attributes of one `MatMulNBits`."""

    packed: TensorEntry  # uint8 [N, n_blocks, block_size * bits / 8]
    scales: TensorEntry  # float32 [N * n_blocks]
    zero_points: TensorEntry | None
    K: int
    N: int
    bits: int
    block_size: int
    accuracy_level: int

    @property
    def entries(self) -> list[TensorEntry]:
        return [e for e in (self.packed, self.scales, self.zero_points) if e is not None]

    def gather_view(self, name: str) -> QuantLinear:
        """The same bytes shaped for `GatherBlockQuantized` ([N, K * bits / 8], [N, n_blocks]):
        a tied embedding reads the head's quantized matrix without a second copy."""
        n_blocks = self.scales.shape[0] // self.N

        def view(entry: TensorEntry, suffix: str, columns: int) -> TensorEntry:
            return replace(entry, name=f"{name}.{suffix}", shape=(self.N, columns))

        zero = self.zero_points
        return replace(
            self,
            packed=view(self.packed, "gather", self.packed.nbytes // self.N),
            scales=view(self.scales, "gather_scales", n_blocks),
            zero_points=None
            if zero is None
            else view(zero, "gather_zero_points", zero.nbytes // self.N),
        )


@dataclass(frozen=True)
class QDQLinear:
    """Static int8 (for NPUs): per-output-channel int8 weight, calibrated activation range."""

    weight: TensorEntry  # int8 [K, N]
    scale: TensorEntry  # float32 [N]
    input_range: tuple[float, float]  # (min, max) of the input on calibration text
    activation_bits: int = 16

    @property
    def entries(self) -> list[TensorEntry]:
        return [self.weight, self.scale]


@dataclass(frozen=True)
class RowInt8:
    """A [V, H] matrix as int8 rows with one scale each: the embedding table (Gather) and, when
    tied, the head (DequantizeLinear + Gemm) read the same bytes."""

    weight: TensorEntry  # int8 [V, H]
    scale: TensorEntry  # float32 [V]
    input_range: tuple[float, float] = (0.0, 0.0)  # the head's input range (QDQ)
    activation_bits: int = 16

    @property
    def entries(self) -> list[TensorEntry]:
        return [self.weight, self.scale]


@dataclass(frozen=True)
class Int8RowLinear:
    """int8 weight per output channel, activations quantized per token (row) at run time,
    `MatMulInteger` (u8 x s8, the AMX/VNNI path of ONNX Runtime's QGEMM): the prefill kernel
    beside block-quantized decode weights, or every linear of the "w8a8" scheme."""

    weight: TensorEntry  # int8 [K, N]
    scale: TensorEntry  # float32 [N]

    @property
    def entries(self) -> list[TensorEntry]:
        return [self.weight, self.scale]


Linear = FloatLinear | QuantLinear | QDQLinear | Int8RowLinear


def activation_grid(low: float, high: float, bits: int) -> tuple[float, int]:
    """Scale and zero point mapping [low, high] (widened to include 0) onto unsigned ints."""
    top = 2**bits - 1
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-8) / top
    return scale, int(np.clip(round(-low / scale), 0, top))


def int8_per_channel(weight: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per slice along `axis` (0: rows, 1: columns)."""
    peak = np.abs(weight).max(axis=1 - axis)
    scale = np.maximum(peak, 1e-12).astype(np.float32) / 127.0
    shaped = scale[:, None] if axis == 0 else scale[None, :]
    return np.clip(np.rint(weight / shaped), -127, 127).astype(np.int8), scale


def write_int8_row_linear(
    out: WeightFileWriter,
    name: str,
    weight: RowWeight,
    suffixes: tuple[str, str] = PREFILL_INT8_SUFFIXES,
) -> Int8RowLinear:
    q, scale = int8_per_channel(np.ascontiguousarray(weight.fp32().T), axis=1)  # [K, N]
    return Int8RowLinear(out.add(f"{name}{suffixes[0]}", q), out.add(f"{name}{suffixes[1]}", scale))


def write_qdq_linear(
    out: WeightFileWriter,
    name: str,
    weight: RowWeight,
    input_range: tuple[float, float],
    activation_bits: int,
    record: dict[str, Any],
) -> QDQLinear:
    q, scale = int8_per_channel(np.ascontiguousarray(weight.fp32().T), axis=1)  # [K, N]
    record[name] = {
        "bits": 8,
        "per_channel": True,
        "static_input_range": list(input_range),
        "activation_bits": activation_bits,
        "from": f"quantized from {weight.source_type}",
    }
    return QDQLinear(
        out.add(f"{name}.int8", q), out.add(f"{name}.scale", scale), input_range, activation_bits
    )


def keeps_source_blocks(
    weight: RowWeight, config: WeightQuantConfig, keep_finer: bool = True
) -> bool:
    """A source's packed blocks are kept when they match the layout asked for (symmetric blocks
    also serve an asymmetric request: their implicit zero point is one), or are more precise
    than it (never degrade what the source shipped, unless not `keep_finer`)."""
    p = weight.packed
    if p is None:
        return False
    same_grid = matches(p, config.bits, config.block_size, config.symmetric) or (
        p.symmetric and matches(p, config.bits, config.block_size, True)
    )
    return same_grid or (keep_finer and p.bits > config.bits)


def quantized(
    weight: RowWeight, config: WeightQuantConfig, keep_finer: bool = True
) -> tuple[QuantizedWeight, str]:
    """Packed blocks in `config`'s layout, and how they were obtained (for the manifest)."""
    p = weight.packed
    if keeps_source_blocks(weight, config, keep_finer):
        kept = "" if p.bits == config.bits else f" (kept {p.bits}-bit)"
        return p, f"repacked {weight.source_type} losslessly{kept}"
    if weight.shape is not None:
        n, k = weight.shape
        layout = (config.bits, config.block_size, config.symmetric)
        return QuantizedWeight.zeros(k, n, *layout), f"quantized from {weight.source_type}"
    return quantize(
        np.ascontiguousarray(weight.fp32().T), config
    ), f"quantized from {weight.source_type}"


def write_linear(
    out: WeightFileWriter,
    name: str,
    weight: RowWeight,
    config: WeightQuantConfig | TokenInt8Config | None,
    record: dict[str, Any],
) -> Linear:
    """Store one linear weight; `record[name]` says what was done to it."""
    if isinstance(config, TokenInt8Config):
        record[name] = {
            "bits": 8,
            "per_channel": True,
            "activations": "int8 per token",
            "from": f"quantized from {weight.source_type}",
        }
        return write_int8_row_linear(out, name, weight, INT8_ROWS_SUFFIXES)
    if config is None:
        record[name] = {"dtype": "float32", "from": weight.source_type}
        return FloatLinear(out.add(name, np.ascontiguousarray(weight.fp32().T, dtype=np.float32)))
    q, how = quantized(weight, config)
    record[name] = {
        "bits": q.bits,
        "block_size": q.block_size,
        "symmetric": q.symmetric,
        "from": how,
    }
    return write_quantized(out, name, q, config.accuracy_level)


def write_quantized(
    out: WeightFileWriter, name: str, q: QuantizedWeight, accuracy_level: int
) -> QuantLinear:
    zero = None if q.zero_points is None else out.add(f"{name}.zero_points", q.zero_points)
    return QuantLinear(
        out.add(f"{name}.q{q.bits}", q.packed),
        out.add(f"{name}.scales", q.scales),
        zero,
        q.K,
        q.N,
        q.bits,
        q.block_size,
        accuracy_level,
    )
