"""LLVM IR of the `MatMulNBits` kernel for ORT's layout (see `quant/blockwise.py`), read in place:

    y[m, n] = sum_b s[n, b] * (sum_(k in b) code[n, k] * x[m, k] - zp[n, b] * xsum[m, b])

The zero points never touch the inner loop: their term is one short dot product over blocks
per row (`nbits_tile`), from per-block sums of x the caller precomputes. The inner loop is
either fp32 (`nbits_fp32`: float FMAs, ORT's accuracy_level 0 math) or int16 activations
(`nbits_vnni`: x rounded to 15 bits per block, AVX-512 VNNI int8 dot products).

Exported C signature (sizes int64; x is float32 for fp32, int8 parts for int16):

    void nbits_gemm(const void *x, int64 x_stride_bytes, const float *lane_scales,
                    int64 lane_stride, const float *xsum, int64 M, const uint8 *packed,
                    const float *scales, const void *zero_points, float *out,
                    int64 out_stride, int64 n_start, int64 n_end, int64 n_blocks)

It writes out[m, n] for all m < M and n_start <= n < n_end; xsum is [M, n_blocks] and
lane_scales (int16 only) [M, lane_stride]. `prepare_fp32` / `prepare_int16` (one per module)
lay x out. Output rows go 4 at a time (a tile may cover 1, 2 or
4 of them), activation rows 8, 4, 2 or 1 at a time, so weights are decoded once per tile.
"""

from __future__ import annotations

from llvmlite import ir

from devices.kernels.irbuild import F32, I8, I64, Emitter
from devices.kernels.nbits_fp32 import Fp32Tile
from devices.kernels.nbits_layout import (
    ACTIVATION_KINDS,
    ZERO_POINT_KINDS,
    NBitsLayout,
    can_permute,
    can_vnni,
    kernel_lanes,
)
from devices.kernels.nbits_prepare_ir import (
    PREPARE_FP32_NAME,
    PREPARE_NAME,
    add_prepare_fp32,
    add_prepare_int16,
)
from devices.kernels.nbits_tile import TileEmitter
from devices.kernels.nbits_vnni import VnniTile

FUNCTION_NAME = "nbits_gemm"
_GROUP = 4  # output rows per step of the row loop; every tile's row count divides it

__all__ = [
    "ACTIVATION_KINDS",
    "FUNCTION_NAME",
    "PREPARE_FP32_NAME",
    "PREPARE_NAME",
    "ZERO_POINT_KINDS",
    "NBitsLayout",
    "build_nbits_module",
    "can_permute",
    "can_vnni",
    "kernel_lanes",
    "tile_shapes",
]


def tile_shapes(vector_registers: int) -> tuple[tuple[int, int], ...]:
    """(output rows, activation rows) per tile, most activation rows first.

    A tile keeps rows * acts running sums in registers (fp32: twice that below
    `SCALE_FIRST_ACTS`, the open block's sums), plus codes and scales; x is read from L1 by the
    multiply-adds. 32 vector registers with AVX-512 or NEON, 16 with AVX2 or SSE.
    """
    if vector_registers >= 32:
        return ((2, 8), (2, 4), (4, 2), (4, 1))
    return ((2, 2), (4, 1))


def _zero_point_row_bytes(e: Emitter, layout: NBitsLayout, n_blocks: ir.Value) -> ir.Value:
    b = e.b
    if layout.zero_points == "uint8" and layout.bits == 4:
        return b.lshr(b.add(n_blocks, e.i64(1)), e.i64(1))
    return n_blocks if layout.zero_points == "uint8" else e.i64(0)


def build_nbits_module(layout: NBitsLayout, vector_registers: int) -> ir.Module:
    """The module exporting `nbits_gemm` for one layout, tiled for the register count."""
    name = f"nbits_{layout.bits}b_bs{layout.block_size}_{layout.zero_points}_{layout.activations}"
    module = ir.Module(name=name)
    tile_class: type[TileEmitter] = VnniTile if layout.activations == "int16" else Fp32Tile
    shapes = tile_shapes(vector_registers)
    tail_shapes = ((1, 1),)  # the < 4 rows left at the end of a thread's share
    tiles = {
        shape: tile_class(module, layout, *shape).emit()
        for shape in dict.fromkeys(shapes + tail_shapes)
    }
    f32p, i8p = F32.as_pointer(), I8.as_pointer()
    signature = ir.FunctionType(
        ir.VoidType(), [i8p, I64, f32p, I64, f32p, I64, i8p, f32p, i8p, f32p, I64, I64, I64, I64]
    )
    fn = ir.Function(module, signature, FUNCTION_NAME)
    (
        x,
        x_stride,
        lane_scales,
        lane_stride,
        xsum,
        M,
        packed,
        scales,
        zp,
        out,
        out_stride,
        n_start,
        n_end,
        n_blocks,
    ) = fn.args
    e = Emitter(ir.IRBuilder(fn.append_basic_block("entry")), layout.lanes)
    b = e.b
    row_bytes = b.mul(n_blocks, e.i64(layout.block_bytes))
    zp_row_bytes = _zero_point_row_bytes(e, layout, n_blocks)

    def call_tile(rows: int, acts: int, row: ir.Value, m: ir.Value) -> None:
        b.call(
            tiles[rows, acts],
            [
                b.gep(x, [b.mul(m, x_stride)]),
                x_stride,
                b.gep(lane_scales, [b.mul(m, lane_stride)]),
                lane_stride,
                b.gep(xsum, [b.mul(m, n_blocks)]),
                b.gep(packed, [b.mul(row, row_bytes)]),
                row_bytes,
                b.gep(scales, [b.mul(row, n_blocks)]),
                b.gep(zp, [b.mul(row, zp_row_bytes)]),
                zp_row_bytes,
                n_blocks,
                b.gep(out, [b.add(b.mul(m, out_stride), row)]),
                out_stride,
            ],
        )

    def row_group(group: int, tile_set: tuple[tuple[int, int], ...], row: ir.Value) -> None:
        """All activation rows for output rows row .. row + group - 1, tile by tile."""
        m = e.variable(e.i64(0))
        for rows, acts in tile_set:

            def step(first: ir.Value, rows: int = rows, acts: int = acts) -> None:
                for sub in range(0, group, rows):
                    call_tile(rows, acts, b.add(row, e.i64(sub)), first)

            b.store(b.load(e.count_loop(b.load(m), M, acts, step)), m)

    rest = e.count_loop(n_start, n_end, _GROUP, lambda row: row_group(_GROUP, shapes, row))
    e.count_loop(b.load(rest), n_end, 1, lambda row: row_group(1, tail_shapes, row))
    b.ret_void()
    if layout.activations == "int16":
        add_prepare_int16(module, layout)
    else:
        add_prepare_fp32(module, layout)
    return module
