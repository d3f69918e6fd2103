"""Lossless repacking of GGUF Q4_0 and Q8_0 tensors into the `MatMulNBits` layout.

Both GGUF types are 32-value blocks with one fp16 scale d and an implicit zero point, which is
exactly a symmetric `MatMulNBits` block of 32 (fp16 -> fp32 is exact, the codes are copied):

    Q4_0  18 bytes: d, then 16 bytes; value i < 16 in the low nibble of byte i, value i + 16 in
          its high nibble; w = d * (q - 8). MatMulNBits 4-bit: zero point 8, codes paired
          (2j, 2j+1) per byte, so only the nibble order changes.
    Q8_0  34 bytes: d, then 32 int8 q; w = d * q. MatMulNBits 8-bit: zero point 128 on uint8,
          so the code is q + 128.

A GGUF weight for `y = x @ W.T` is stored as N rows (output features) of K/32 blocks, which is
already the row order of `MatMulNBits`' B [N, n_blocks, blob]. Q4_1 is not here: its per-block
minimum is a fractional zero point, exact only up to fp32 rounding, and it would need float
zero points, which disable the kernel's int8 path.
"""

from __future__ import annotations

import numpy as np

from quant.blockwise import QuantizedWeight, from_codes

GGUF_BLOCK = 32
# GGML type name -> bytes per 32-value block.
LOSSLESS_TYPES = {"Q4_0": 2 + GGUF_BLOCK // 2, "Q8_0": 2 + GGUF_BLOCK}


def _type_name(ggml_type: object) -> str:
    """Accept 'Q4_0', or gguf's GGMLQuantizationType enum, without importing gguf."""
    name = getattr(ggml_type, "name", ggml_type)
    if name not in LOSSLESS_TYPES:
        raise ValueError(
            f"GGUF type {name!r} cannot be repacked losslessly; allowed: {list(LOSSLESS_TYPES)}"
        )
    return str(name)


def _blocks(raw: np.ndarray | bytes, shape: tuple[int, int], block_bytes: int) -> np.ndarray:
    """Raw tensor bytes -> [N, K/32, block_bytes] uint8, checking the size first."""
    N, K = shape
    if K % GGUF_BLOCK:
        raise ValueError(f"GGUF row length K={K} is not a multiple of {GGUF_BLOCK}")
    data = np.frombuffer(raw, np.uint8) if isinstance(raw, bytes) else np.asarray(raw)
    expected = N * (K // GGUF_BLOCK) * block_bytes
    if data.dtype != np.uint8 or data.size != expected:
        raise ValueError(
            f"GGUF data for shape (N={N}, K={K}) must be {expected} uint8 bytes, "
            f"got {data.size} {data.dtype}"
        )
    return data.reshape(N, K // GGUF_BLOCK, block_bytes)


def _scales(blocks: np.ndarray) -> np.ndarray:
    """The fp16 d at the start of each block -> float32 [N, nb] (exact widening)."""
    return np.ascontiguousarray(blocks[..., :2]).view(np.float16)[..., 0].astype(np.float32)


def repack_q4_0(raw: np.ndarray | bytes, shape: tuple[int, int]) -> QuantizedWeight:
    """GGUF Q4_0 data of a weight [N, K] (rows = outputs) -> symmetric 4-bit, block 32."""
    blocks = _blocks(raw, shape, LOSSLESS_TYPES["Q4_0"])
    qs = blocks[..., 2:]  # [N, nb, 16]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1)  # codes: [N, nb, 32], q in 0..15
    return from_codes(codes, _scales(blocks), None, K=shape[1], bits=4)


def repack_q8_0(raw: np.ndarray | bytes, shape: tuple[int, int]) -> QuantizedWeight:
    """GGUF Q8_0 data of a weight [N, K] (rows = outputs) -> symmetric 8-bit, block 32."""
    blocks = _blocks(raw, shape, LOSSLESS_TYPES["Q8_0"])
    q = np.ascontiguousarray(blocks[..., 2:]).view(np.int8)  # [N, nb, 32]
    codes = (q.astype(np.int16) + 128).astype(np.uint8)
    return from_codes(codes, _scales(blocks), None, K=shape[1], bits=8)


def repack_gguf(
    raw: np.ndarray | bytes, ggml_type: object, shape: tuple[int, int]
) -> QuantizedWeight:
    """Dispatch on the GGML type; `shape` is the numpy shape [N, K] of the dequantized tensor
    (GGUF metadata lists it reversed, as (K, N))."""
    name = _type_name(ggml_type)
    return repack_q4_0(raw, shape) if name == "Q4_0" else repack_q8_0(raw, shape)


def repacked_layout(ggml_type: object, shape: tuple[int, int]) -> QuantizedWeight:
    """Zeros in the layout `repack_gguf` gives a weight of this type and [N, K] shape, without
    its data (a layout-only export, `exporters.layout`)."""
    name = _type_name(ggml_type)
    return QuantizedWeight.zeros(shape[1], shape[0], 4 if name == "Q4_0" else 8, GGUF_BLOCK, True)


def is_lossless(ggml_type: object) -> bool:
    """Whether `repack_gguf` can take this type without re-quantizing."""
    return getattr(ggml_type, "name", ggml_type) in LOSSLESS_TYPES
