"""The part of every `MatMulNBits` tile that does not depend on how codes meet x.

A tile is one internal LLVM function computing `rows` output rows for `acts` activation rows
over all of K. Subclasses (fp32 in `nbits_fp32`, int16 x with VNNI in `nbits_vnni`) emit the
main loop and return its running sums; this base sets up the pointers, subtracts the
zero-point term and stores the outputs:

    out[m, n] = sum(accs[n][m]) - sum_b s[n, b] * zp[n, b] * xsum[m, b]
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

from devices.kernels.irbuild import F32, FLAGS, I8, I32, I64, Emitter
from devices.kernels.nbits_layout import NBitsLayout

PREFETCH_ROWS = 16  # how many output rows ahead the software prefetches read
# prefetcht2: measured here ~20-40% faster from DRAM than prefetcht0, which holds one of L1's
# few fill buffers per line until it arrives and so caps the lines in flight.
PREFETCH_LOCALITY = 1


@dataclass(frozen=True)
class TileArgs:
    """The tile function's arguments, by name (pointers to row n0 / activation row m0)."""

    x: ir.Value  # i8*: fp32 x, or int16-path int8 x parts
    x_stride: ir.Value  # bytes between activation rows of x
    lane_scales: ir.Value  # float*: int16 path, x's scale per VNNI lane; unused by fp32
    lane_stride: ir.Value  # floats between activation rows of lane_scales
    xsum: ir.Value  # float* [acts, n_blocks]: per-block sums of x
    packed: ir.Value
    row_bytes: ir.Value
    scales: ir.Value
    zp: ir.Value
    zp_row_bytes: ir.Value
    n_blocks: ir.Value
    out: ir.Value
    out_stride: ir.Value


def tile_type() -> ir.FunctionType:
    f32p, i8p = F32.as_pointer(), I8.as_pointer()
    return ir.FunctionType(
        ir.VoidType(), [i8p, I64, f32p, I64, f32p, i8p, I64, f32p, i8p, I64, I64, f32p, I64]
    )


class TileEmitter:
    """Emits one tile function; subclasses implement `main_loop`."""

    def __init__(self, module: ir.Module, layout: NBitsLayout, rows: int, acts: int) -> None:
        self.module, self.layout, self.rows, self.acts = module, layout, rows, acts
        self.fn = ir.Function(module, tile_type(), f"tile_{rows}x{acts}")
        self.fn.linkage = "internal"
        self.a = TileArgs(*self.fn.args)
        for pointer in (
            self.a.x,
            self.a.lane_scales,
            self.a.xsum,
            self.a.packed,
            self.a.scales,
            self.a.zp,
            self.a.out,
        ):
            pointer.add_attribute("noalias")
        self.e = Emitter(ir.IRBuilder(self.fn.append_basic_block("entry")), layout.lanes)

    def emit(self) -> ir.Function:
        e, b, a = self.e, self.e.b, self.a
        self._row_pointers()
        self.accs = self.main_loop()
        for r in range(self.rows):
            for m in range(self.acts):
                total = self.accs[0][r][m]
                for other in self.accs[1:]:
                    total = b.fadd(total, other[r][m], flags=FLAGS)
                b.store(e.hsum(total), self._out(e.i64(r), m))

        def correct(r: ir.Value) -> None:  # a loop, not unrolled: one copy of this code
            scale_row = b.gep(a.scales, [b.mul(a.n_blocks, r)])
            zp_row = b.gep(a.zp, [b.mul(a.zp_row_bytes, r)])
            for m, term in enumerate(self._zero_point_terms(scale_row, zp_row)):
                pointer = self._out(r, m)
                b.store(b.fsub(b.load(pointer), term), pointer)

        e.count_loop(e.i64(0), e.i64(self.rows), 1, correct)
        b.ret_void()
        return self.fn

    def _out(self, r: ir.Value, m: int) -> ir.Value:
        b, a = self.e.b, self.a
        return b.gep(a.out, [b.add(b.mul(a.out_stride, self.e.i64(m)), r)])

    def main_loop(self) -> list[list[list[ir.Value]]]:
        """Emit the loop over K; return sets of float vectors [set][row][act] to be summed."""
        raise NotImplementedError

    def new_sums(self) -> list[list[ir.Value]]:
        """Zeroed float-vector variables [row][act] (stored where the builder is)."""
        return [
            [self.e.variable(self.e.zeros()) for _ in range(self.acts)] for _ in range(self.rows)
        ]

    def load_all(self, slots: list[list[ir.Value]]) -> list[list[ir.Value]]:
        return [[self.e.b.load(slot) for slot in row] for row in slots]

    def store_all(self, slots: list[list[ir.Value]], values: list[list[ir.Value]]) -> None:
        for slot_row, value_row in zip(slots, values, strict=True):
            for slot, value in zip(slot_row, value_row, strict=True):
                self.e.b.store(value, slot)

    def _row_pointers(self) -> None:
        """Per-row and per-act base pointers, and where the prefetch streams start."""
        e, b, a = self.e, self.e.b, self.a
        self.packed_rows = [
            b.gep(a.packed, [b.mul(a.row_bytes, e.i64(r))]) for r in range(self.rows)
        ]
        self.scale_rows = [b.gep(a.scales, [b.mul(a.n_blocks, e.i64(r))]) for r in range(self.rows)]
        self.x_rows = [b.gep(a.x, [b.mul(a.x_stride, e.i64(m))]) for m in range(self.acts)]
        self.lane_rows = [
            b.gep(a.lane_scales, [b.mul(a.lane_stride, e.i64(m))]) for m in range(self.acts)
        ]
        self.xsum_rows = [b.gep(a.xsum, [b.mul(a.n_blocks, e.i64(m))]) for m in range(self.acts)]
        ahead = e.i64(PREFETCH_ROWS)
        self.prefetch_packed = b.gep(a.packed, [b.mul(a.row_bytes, ahead)])
        self.prefetch_scales = b.gep(a.scales, [b.mul(a.n_blocks, ahead)])
        if self.layout.zero_points != "none":  # small: all of the future rows' lines at once
            zp_ahead = b.gep(a.zp, [b.mul(a.zp_row_bytes, ahead)])
            end = b.add(b.mul(a.zp_row_bytes, e.i64(self.rows)), e.i64(63))
            e.count_loop(
                e.i64(0),
                end,
                64,
                lambda offset: e.prefetch(b.gep(zp_ahead, [offset]), PREFETCH_LOCALITY),
            )

    def prefetch_step(self, code_offset: ir.Value, code_bytes: int, scale_index: ir.Value) -> None:
        """Prefetch the weights PREFETCH_ROWS rows below at the pace this tile reads its own.

        Called once per step that reads `code_bytes` code bytes per row at `code_offset` and the
        scale at `scale_index`. A row is ~1 KB (K=2048, int4), too short a stream for hardware
        prefetchers, but consecutive rows are contiguous: one steady software stream covers
        them all, `rows` times the per-row offsets.
        """
        e, b = self.e, self.e.b
        base = b.mul(code_offset, e.i64(self.rows))
        for line in range(0, self.rows * code_bytes, 64):
            e.prefetch(b.gep(self.prefetch_packed, [b.add(base, e.i64(line))]), PREFETCH_LOCALITY)
        scale = b.gep(self.prefetch_scales, [b.mul(scale_index, e.i64(self.rows))])
        e.prefetch(scale, PREFETCH_LOCALITY)

    def _zero_point_terms(self, scale_row: ir.Value, zp_row: ir.Value) -> list[ir.Value]:
        """sum_b s[b] * zp[b] * xsum[m, b] of one row for each act m: vectors of blocks, then
        a tail."""
        e, b, a, lanes = self.e, self.e.b, self.a, self.layout.lanes
        vector_sums = [e.variable(e.zeros()) for _ in range(self.acts)]

        def vector_step(first: ir.Value) -> None:
            weights = b.fmul(
                e.load_vector(scale_row, first, F32), self._zero_point_vector(zp_row, first)
            )
            for m, slot in enumerate(vector_sums):
                xsum = e.load_vector(self.xsum_rows[m], first, F32)
                b.store(e.madd(weights, xsum, b.load(slot)), slot)

        tail_start = e.count_loop(e.i64(0), a.n_blocks, lanes, vector_step)
        tail_sums = [e.variable(ir.Constant(F32, 0.0)) for _ in range(self.acts)]

        def scalar_step(block: ir.Value) -> None:
            scale = b.load(b.gep(scale_row, [block]), align=4)
            weight = b.fmul(scale, self._zero_point_scalar(zp_row, block))
            for m, slot in enumerate(tail_sums):
                xsum = b.load(b.gep(self.xsum_rows[m], [block]), align=4)
                b.store(e.madd(weight, xsum, b.load(slot)), slot)

        e.count_loop(b.load(tail_start), a.n_blocks, 1, scalar_step)
        return [b.fadd(e.hsum(b.load(v)), b.load(t)) for v, t in zip(vector_sums, tail_sums)]

    def _zero_point_vector(self, row: ir.Value, first: ir.Value) -> ir.Value:
        """Zero points of blocks first .. first + lanes - 1 of a row, as floats."""
        e, b, layout = self.e, self.e.b, self.layout
        if layout.zero_points == "none":
            return ir.Constant(e.vf, [float(2 ** (layout.bits - 1))] * layout.lanes)
        if layout.bits == 8:
            return b.sitofp(b.zext(e.load_vector(row, first, I8), e.vi), e.vf)
        half = layout.lanes // 2  # two 4-bit zero points per byte, even block low
        narrow = ir.VectorType(I32, half)
        pairs = b.zext(e.load_vector(row, b.lshr(first, e.i64(1)), I8, half), narrow)
        low = b.and_(pairs, e.splat(ir.Constant(I32, 15), half))
        high = b.lshr(pairs, e.splat(ir.Constant(I32, 4), half))
        order = [i // 2 + (half if i % 2 else 0) for i in range(layout.lanes)]
        mixed = b.shuffle_vector(low, high, ir.Constant(e.vi, order))
        return b.sitofp(mixed, e.vf)

    def _zero_point_scalar(self, row: ir.Value, block: ir.Value) -> ir.Value:
        e, b, layout = self.e, self.e.b, self.layout
        if layout.zero_points == "none":
            return ir.Constant(F32, float(2 ** (layout.bits - 1)))
        if layout.bits == 8:
            return b.uitofp(e.load_scalar(row, block), F32)
        byte = b.zext(e.load_scalar(row, b.lshr(block, e.i64(1))), I64)
        shift = b.shl(b.and_(block, e.i64(1)), e.i64(2))
        return b.uitofp(b.and_(b.lshr(byte, shift), e.i64(15)), F32)
