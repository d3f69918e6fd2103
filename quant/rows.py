"""Row operations on quantized weights (rows = output features, as MatMulNBits stores them).

Fusing Q/K/V or gate/up projections concatenates rows; undoing llama.cpp's rope permutation
reorders rows. Both are exact on packed data, so a lossless GGUF repack stays lossless.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from quant.blockwise import QuantizedWeight


def _zero_rows(q: QuantizedWeight) -> np.ndarray | None:
    return None if q.zero_points is None else q.zero_points.reshape(q.N, -1)


def take_rows(q: QuantizedWeight, rows: np.ndarray) -> QuantizedWeight:
    """The weight restricted to (and reordered by) output rows `rows`."""
    zp = _zero_rows(q)
    return QuantizedWeight(
        packed=np.ascontiguousarray(q.packed[rows]),
        scales=np.ascontiguousarray(q.scales.reshape(q.N, -1)[rows]).reshape(-1),
        zero_points=None if zp is None else np.ascontiguousarray(zp[rows]).reshape(-1),
        K=q.K,
        N=len(rows),
        bits=q.bits,
        block_size=q.block_size,
    )


def concat_rows(parts: Sequence[QuantizedWeight]) -> QuantizedWeight:
    """Stack weights with the same K, bits, block size and symmetry along output rows."""
    first = parts[0]
    for p in parts[1:]:
        if (p.K, p.bits, p.block_size, p.symmetric) != (
            first.K,
            first.bits,
            first.block_size,
            first.symmetric,
        ):
            raise ValueError("cannot concatenate quantized weights with different layouts")
    zps = [_zero_rows(p) for p in parts]
    return QuantizedWeight(
        packed=np.concatenate([p.packed for p in parts]),
        scales=np.concatenate([p.scales for p in parts]),
        zero_points=None if zps[0] is None else np.concatenate(zps).reshape(-1),
        K=first.K,
        N=sum(p.N for p in parts),
        bits=first.bits,
        block_size=first.block_size,
    )


def matches(q: QuantizedWeight, bits: int, block_size: int, symmetric: bool) -> bool:
    return (q.bits, q.block_size, q.symmetric) == (bits, block_size, symmetric)
