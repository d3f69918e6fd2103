"""x laid out for the `MatMulNBits` kernels, once per call (x is tiny next to the weights).

fp32: x zero-padded to whole blocks and, for 4 bits, de-interleaved per chunk of 2*lanes (the
even-k lanes, then the odd-k lanes) to match the two nibbles of a byte; per-block sums of x.

int16: x rounded per block to integers xq = hi * 128 + lo with |xq| <= 16256 (so |hi| <= 127,
|lo| <= 64 fit int8) and one float scale per block; the error is at most the block's max |x| /
32512. hi and lo are laid out in the byte order of one 64-byte code step (for 4 bits: even-k,
then odd-k codes), and each VNNI lane gets its block's scale. Per-block sums of the rounded x
keep the zero-point term consistent with it.

Both are JIT-compiled too (`nbits_prepare_ir`): in numpy they took 10-45 us per call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from devices.kernels.nbits_layout import VNNI_GROUP_BYTES, NBitsLayout

INT16_LEVELS = 127 * 128  # |xq| <= this, so hi = round(xq / 128) fits int8
_LANES = 16
_EMPTY = np.zeros(1, np.float32)


@dataclass(frozen=True)
class PreparedX:
    """Arrays the kernel reads for one call (kept referenced until the call returns)."""

    x: np.ndarray  # [M, row] float32 (fp32) or int8 (int16)
    lane_scales: np.ndarray  # [M, steps * 16] float32 (int16), or a dummy
    xsum: np.ndarray  # [M, n_blocks] float32

    def __post_init__(self) -> None:
        # the kernel walks these with row strides of their own: C order or garbage out
        assert all(a.flags.c_contiguous for a in (self.x, self.lane_scales, self.xsum))

    @property
    def rows(self) -> int:
        return self.xsum.shape[0]

    @property
    def x_stride(self) -> int:
        return self.x.strides[0]

    @property
    def lane_stride(self) -> int:
        return self.lane_scales.shape[1] if self.lane_scales.ndim == 2 else 0


def _padded(x: np.ndarray, width: int) -> np.ndarray:
    if x.shape[1] == width and x.flags.c_contiguous:
        return x
    padded = np.zeros((x.shape[0], width), np.float32)
    padded[:, : x.shape[1]] = x
    return padded


def prepare_fp32(
    x: np.ndarray, layout: NBitsLayout, n_blocks: int, prepare: Callable[..., None]
) -> PreparedX:
    """Block sums (and for 4 bits the de-interleaved copy) with the JIT-compiled `prepare`."""
    M = x.shape[0]
    source = _padded(x, n_blocks * layout.block_size)
    xsum = np.empty((M, n_blocks), np.float32)
    # 8 bits read x as it is (a PreparedX lives only for the call that made it); 4 bits
    # de-interleave it into a copy
    laid_out = np.empty_like(source) if layout.bits == 4 else source
    prepare(
        source.ctypes.data,
        M,
        source.shape[1],
        n_blocks,
        laid_out.ctypes.data,
        laid_out.shape[1],
        xsum.ctypes.data,
    )
    return PreparedX(laid_out, _EMPTY, xsum)


def prepare_int16(
    x: np.ndarray, layout: NBitsLayout, n_blocks: int, prepare: Callable[..., None]
) -> PreparedX:
    """Round and lay out x with the JIT-compiled `prepare` (see `nbits_prepare_ir`)."""
    M = x.shape[0]
    steps = -(-n_blocks * layout.block_size // layout.codes_per_group)
    source = _padded(x, n_blocks * layout.block_size)
    parts = np.zeros((M, steps * layout.x_parts * VNNI_GROUP_BYTES), np.int8)
    lane_scales = np.zeros((M, steps * _LANES), np.float32)
    xsum = np.empty((M, n_blocks), np.float32)
    prepare(
        source.ctypes.data,
        M,
        source.shape[1],
        n_blocks,
        parts.ctypes.data,
        parts.shape[1],
        lane_scales.ctypes.data,
        lane_scales.shape[1],
        xsum.ctypes.data,
    )
    return PreparedX(parts, lane_scales, xsum)
