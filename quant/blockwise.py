"""Block-wise weight-only quantization in the exact layout of ONNX Runtime's `MatMulNBits`.

A weight W [K, N] (used as `x @ W`) is cut into blocks of `block_size` along K, per output column
n; K is zero-padded to a multiple of `block_size`. Each block has one scale and one zero point:
`w = (code - zero_point) * scale`. Layout (ORT `docs/ContribOperators.md`, `com.microsoft.
MatMulNBits`; checked in tests against the kernel and against the C++ packer ORT's own
`MatMulNBitsQuantizer` calls, `onnxruntime.capi._pybind_state.quantize_matmul_{4,8}bits`):

    B            uint8   [N, n_blocks, block_size * bits // 8], 4-bit codes two per byte,
                         even k in the low nibble
    scales       float32 [N * n_blocks], row n block b at n * n_blocks + b
    zero_points  uint8   [N * ceil(n_blocks * bits / 8)], packed like B within each row n;
                 or None: the kernel's implicit 2**(bits-1) (8 for int4, 128 for int8)

Only numpy is imported here, so a runtime without onnx can dequantize.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quant.config import ALLOWED_BITS, ALLOWED_BLOCK_SIZES, WeightQuantConfig

# Rows of N quantized at once: bounds the float temporaries to ~16 MiB each.
_CHUNK_ELEMENTS = 1 << 22


def n_blocks_of(K: int, block_size: int) -> int:
    """Blocks per column; the last one is zero-padded when K is not a multiple."""
    return -(-K // block_size)


@dataclass(frozen=True, eq=False)
class QuantizedWeight:
    """A quantized [K, N] weight, arrays laid out exactly as `MatMulNBits` inputs want them."""

    packed: np.ndarray  # packed: [N, n_blocks, block_size * bits // 8] uint8
    scales: np.ndarray  # scales: [N * n_blocks] float32
    zero_points: np.ndarray | None  # uint8 [N * ceil(n_blocks * bits / 8)]
    K: int
    N: int
    bits: int
    block_size: int

    def __post_init__(self) -> None:
        if self.bits not in ALLOWED_BITS or self.block_size not in ALLOWED_BLOCK_SIZES:
            raise ValueError(
                f"QuantizedWeight bits/block_size must be in {list(ALLOWED_BITS)} / "
                f"{list(ALLOWED_BLOCK_SIZES)}, got {self.bits} / {self.block_size}"
            )
        if self.K <= 0 or self.N <= 0:
            raise ValueError(f"QuantizedWeight K and N must be positive, got {self.K}, {self.N}")
        nb = self.n_blocks
        _expect("packed", self.packed, np.uint8, (self.N, nb, self.block_size * self.bits // 8))
        _expect("scales", self.scales, np.float32, (self.N * nb,))
        if self.zero_points is not None:
            _expect("zero_points", self.zero_points, np.uint8, (self.N * -(-nb * self.bits // 8),))

    @classmethod
    def zeros(cls, K: int, N: int, bits: int, block_size: int, symmetric: bool) -> QuantizedWeight:
        """All-zero arrays in the layout `quantize` would produce: what a layout-only export
        (`exporters.layout`) stores in place of values it never computes. `np.zeros` maps
        untouched pages, so this costs no memory until written."""
        nb = n_blocks_of(K, block_size)
        zero_points = None if symmetric else np.zeros(N * -(-nb * bits // 8), np.uint8)
        packed = np.zeros((N, nb, block_size * bits // 8), np.uint8)
        return cls(packed, np.zeros(N * nb, np.float32), zero_points, K, N, bits, block_size)

    @property
    def n_blocks(self) -> int:
        return n_blocks_of(self.K, self.block_size)

    @property
    def symmetric(self) -> bool:
        """True when the kernel's implicit zero point 2**(bits-1) applies."""
        return self.zero_points is None

    @property
    def nbytes(self) -> int:
        zp = 0 if self.zero_points is None else self.zero_points.nbytes
        return self.packed.nbytes + self.scales.nbytes + zp


def _expect(name: str, array: np.ndarray, dtype: type, shape: tuple[int, ...]) -> None:
    """Reject arrays the kernel would misread: wrong dtype or shape means a wrong layout."""
    if not isinstance(array, np.ndarray) or array.dtype != dtype or array.shape != shape:
        got = (getattr(array, "dtype", type(array)), getattr(array, "shape", None))
        raise ValueError(
            f"QuantizedWeight.{name} must be {np.dtype(dtype)} {shape}, got {got[0]} {got[1]}"
        )


def pack_codes(codes: np.ndarray, bits: int, pad: int = 0) -> np.ndarray:
    """Pack unsigned codes along the last axis; 4-bit: element 2i low nibble, 2i+1 high.

    An odd count leaves a last high nibble of `pad` (ORT's packer writes 8 for zero points).
    """
    codes = codes.astype(np.uint8, copy=False)
    if bits == 8:
        return np.ascontiguousarray(codes)
    if codes.shape[-1] % 2:
        codes = np.concatenate([codes, np.full((*codes.shape[:-1], 1), pad, np.uint8)], axis=-1)
    return np.ascontiguousarray(codes[..., 0::2] | (codes[..., 1::2] << 4))


def unpack_codes(packed: np.ndarray, bits: int, length: int | None = None) -> np.ndarray:
    """Inverse of `pack_codes`; `length` drops a padding nibble."""
    if bits == 8:
        codes = packed
    else:
        codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(*packed.shape[:-1], -1)
    return codes if length is None else codes[..., :length]


def to_blocks(weight: np.ndarray, block_size: int) -> np.ndarray:
    """[K, N] weight -> [N, n_blocks, block_size] float32, K zero-padded."""
    K, N = weight.shape
    padded = n_blocks_of(K, block_size) * block_size
    rows = np.zeros((N, padded), np.float32)  # rows: [N, K_padded]
    rows[:, :K] = weight.T
    return rows.reshape(N, -1, block_size)


def round_half_away(x: np.ndarray) -> np.ndarray:
    """C's roundf (ties away from zero), as MLAS uses: np.rint rounds ties to even and so
    disagrees with ORT's packer on exact ties, which the 8-bit grid hits on real data."""
    whole = np.trunc(x)
    return whole + np.copysign(np.abs(x - whole) >= 0.5, x)


def _symmetric(blocks: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes and scales with zero point 2**(bits-1) using all 2**bits levels.

    As in ORT's MLAS packer and GGUF Q4_0, the extreme value m maps to the code 0 (so the scale
    has the opposite sign of m); unlike them, the scale also grows just enough that the largest
    value of the other sign rounds within range, which keeps every error <= |scale| / 2 (theirs
    clamps such values with errors up to |scale|) and is marginally better in RMS error.
    """
    half = 2 ** (bits - 1)
    hi, lo = blocks.max(axis=-1), blocks.min(axis=-1)  # [N, nb]
    m = np.where(np.abs(hi) >= np.abs(lo), hi, lo)
    opposite = np.maximum(np.where(m > 0, -lo, hi), 0.0)
    magnitude = np.maximum(np.abs(m) / half, opposite / (half - 0.5))
    scales = np.where(m > 0, -magnitude, magnitude).astype(np.float32)  # [N, nb]
    safe = np.where(scales == 0, 1.0, scales)[..., None]
    codes = np.clip(round_half_away(blocks / safe) + half, 0, 2 * half - 1)
    return codes.astype(np.uint8), scales


def _asymmetric(blocks: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes, scales and integer zero points over [min(x, 0), max(x, 0)], as ORT's MLAS does.

    Keeping 0 in the range keeps the zero point within [0, 2**bits - 1], so rounding it costs at
    most half a step and every error stays <= scale / 2.
    """
    top = 2**bits - 1
    lo = np.minimum(blocks.min(axis=-1), 0.0)  # [N, nb]
    hi = np.maximum(blocks.max(axis=-1), 0.0)
    scales = ((hi - lo) / top).astype(np.float32)
    safe = np.where(scales == 0, 1.0, scales)
    zero_points = np.clip(round_half_away(-lo / safe), 0, top)  # [N, nb]
    shifted = blocks / safe[..., None] + zero_points[..., None]
    codes = np.clip(round_half_away(shifted), 0, top)
    return codes.astype(np.uint8), scales, zero_points.astype(np.uint8)


def quantize_blocks(
    blocks: np.ndarray, config: WeightQuantConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """[rows, n_blocks, block_size] -> codes, scales [rows, nb], zero points [rows, nb] | None."""
    if config.symmetric:
        return (*_symmetric(blocks, config.bits), None)
    return _asymmetric(blocks, config.bits)


def from_codes(
    codes: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, K: int, bits: int
) -> QuantizedWeight:
    """Pack unpacked codes [N, nb, bs], scales [N, nb], zero points [N, nb] (or None)."""
    N, _, block_size = codes.shape
    if zero_points is not None:
        zero_points = pack_codes(zero_points, bits, pad=2 ** (bits - 1)).reshape(-1)
    return QuantizedWeight(
        packed=pack_codes(codes, bits),
        scales=np.ascontiguousarray(scales, dtype=np.float32).reshape(-1),
        zero_points=zero_points,
        K=K,
        N=N,
        bits=bits,
        block_size=block_size,
    )


def quantize(weight: np.ndarray, config: WeightQuantConfig) -> QuantizedWeight:
    """Quantize a [K, N] weight (the layout of `x @ W`) block-wise along K.

    RTN keeps every error within |scale| / 2; asymmetric RTN is byte-identical to ORT's own
    packer. Columns go in chunks so a 150k-row embedding does not need GBs of temporaries.
    """
    weight = np.asarray(weight, dtype=np.float32)
    if weight.ndim != 2 or 0 in weight.shape:
        raise ValueError(f"quantize expects a non-empty 2-D [K, N] weight, got {weight.shape}")
    if not np.isfinite(weight).all():
        raise ValueError("quantize got a weight with NaN or infinite values")
    K, N = weight.shape
    step = max(1, _CHUNK_ELEMENTS // K)
    parts = [
        quantize_blocks(to_blocks(weight[:, n : n + step], config.block_size), config)
        for n in range(0, N, step)
    ]
    codes, scales = (np.concatenate([p[i] for p in parts]) for i in (0, 1))
    zero_points = None if parts[0][2] is None else np.concatenate([p[2] for p in parts])
    return from_codes(codes, scales, zero_points, K, config.bits)


def unpacked_zero_points(q: QuantizedWeight) -> np.ndarray:
    """Zero points as float32 [N, n_blocks], the implicit 2**(bits-1) when symmetric."""
    nb = q.n_blocks
    if q.zero_points is None:
        return np.full((q.N, nb), 2 ** (q.bits - 1), np.float32)
    rows = q.zero_points.reshape(q.N, -1)  # rows: [N, ceil(nb * bits / 8)]
    return unpack_codes(rows, q.bits, nb).astype(np.float32)


def dequantize(q: QuantizedWeight) -> np.ndarray:
    """The numpy reference: [K, N] float32 with w = (code - zero_point) * scale."""
    codes = unpack_codes(q.packed, q.bits).astype(np.float32)  # [N, nb, bs]
    zero = unpacked_zero_points(q)[..., None]  # [N, nb, 1]
    scales = q.scales.reshape(q.N, q.n_blocks, 1)
    rows = ((codes - zero) * scales).reshape(q.N, -1)  # [N, K_padded]
    return np.ascontiguousarray(rows[:, : q.K].T)
