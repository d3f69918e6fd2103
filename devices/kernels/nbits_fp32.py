"""fp32 tiles: codes widened to float vectors and multiplied into float x with vector FMAs.

Per block and output row, the codes are decoded once and multiplied into every activation row
of the tile; the block's scale is applied once, to the block's partial sums (or, from
`SCALE_FIRST_ACTS` activation rows, to the decoded codes). An int4 block of 32 costs 7 vector
instructions per row with AVX-512: widen, shift, two `vpermps` nibble lookups, three FMAs.

4-bit bytes hold k even in the low nibble and k odd in the high one, so x arrives de-interleaved
per chunk of `2 * lanes` values (`lanes` even-k then `lanes` odd-k floats): the low nibbles of
`lanes` consecutive bytes then multiply one contiguous x vector, the high ones the next.
"""

from __future__ import annotations

from llvmlite import ir

from devices.kernels.irbuild import F32, FLAGS, I8, I32
from devices.kernels.nbits_layout import NBitsLayout
from devices.kernels.nbits_tile import TileEmitter

SCALE_FIRST_ACTS = 4  # from this many activation rows per tile, scale codes before the FMAs
SUM_SETS = {1: 2, 2: 2}  # running-sum sets by tile size (rows * acts)
_UNROLL = 4  # chunks (vector loads of codes) unrolled per block before looping
_PERMUTE = "llvm.x86.avx512.permvar.sf.512"  # vpermps: float table lookup by the low 4 bits


class Fp32Tile(TileEmitter):
    """One fp32 tile over all blocks of K."""

    def __init__(self, module: ir.Module, layout: NBitsLayout, rows: int, acts: int) -> None:
        super().__init__(module, layout, rows, acts)
        vf = self.e.vf
        self.permute = None
        if layout.permute and layout.bits == 4:
            self.permute = module.globals.get(_PERMUTE) or ir.Function(
                module, ir.FunctionType(vf, [vf, self.e.vi]), _PERMUTE
            )

    def main_loop(self) -> list[list[list[ir.Value]]]:
        e, b, a = self.e, self.e.b, self.a
        self.x_floats = [b.bitcast(row, F32.as_pointer()) for row in self.x_rows]
        # Small tiles alternate two sets of running sums between even and odd blocks, so that
        # consecutive blocks do not wait on each other's FMA latency.
        sets = [self.new_sums() for _ in range(SUM_SETS.get(self.rows * self.acts, 1))]

        def blocks(first: ir.Value) -> None:
            for i, accs in enumerate(sets):
                self._block(b.add(first, e.i64(i)), accs)

        rest = e.count_loop(e.i64(0), a.n_blocks, len(sets), blocks)
        if len(sets) > 1:
            e.count_loop(b.load(rest), a.n_blocks, 1, lambda blk: self._block(blk, sets[0]))
        return [self.load_all(accs) for accs in sets]

    def _codes(self, r: int, offset: ir.Value) -> list[ir.Value]:
        """Codes of one chunk as float vectors: [even k, odd k] for 4 bits, [k] for 8."""
        e, b = self.e, self.e.b
        codes = b.zext(e.load_vector(self.packed_rows[r], offset, I8), e.vi)
        if self.layout.bits == 8:
            return [b.sitofp(codes, e.vf)]
        high = b.lshr(codes, e.splat(ir.Constant(I32, 4)))
        if self.permute is not None:  # vpermps reads only the low 4 bits of each index
            table = ir.Constant(e.vf, [float(i) for i in range(16)])
            return [b.call(self.permute, [table, codes]), b.call(self.permute, [table, high])]
        low = b.and_(codes, e.splat(ir.Constant(I32, 15)))
        return [b.sitofp(low, e.vf), b.sitofp(high, e.vf)]

    def _block(self, block: ir.Value, accs: list[list[ir.Value]]) -> None:
        """Add one block's code * x * scale into every (row, act) accumulator.

        Blocks of up to `_UNROLL` chunks are unrolled; longer ones loop over groups of chunks,
        which keeps the machine code (and compile time) small for 128- and 256-wide blocks.
        """
        e, b, layout = self.e, self.e.b, self.layout
        code_base = b.mul(block, e.i64(layout.block_bytes))
        self.prefetch_step(code_base, layout.block_bytes, block)
        scales = [e.splat(b.load(b.gep(row, [block]), align=4)) for row in self.scale_rows]
        scale_first = scales if self.acts >= SCALE_FIRST_ACTS else None
        x_base = b.mul(block, e.i64(layout.block_size))
        if layout.chunks_per_block <= _UNROLL:
            start = self.load_all(accs) if scale_first else None
            sums = self._chunks(
                code_base, x_base, range(layout.chunks_per_block), start, scale_first
            )
        else:
            slots = accs if scale_first else self.new_sums()

            def group(first: ir.Value) -> None:
                codes = b.add(code_base, b.mul(first, e.i64(layout.lanes)))
                xs = b.add(x_base, b.mul(first, e.i64(layout.codes_per_chunk)))
                self.store_all(
                    slots,
                    self._chunks(codes, xs, range(_UNROLL), self.load_all(slots), scale_first),
                )

            e.count_loop(e.i64(0), e.i64(layout.chunks_per_block), _UNROLL, group)
            sums = self.load_all(slots)
        if not scale_first:
            sums = [
                [e.madd(value, scale, acc) for value, acc in zip(row, acc_row)]
                for row, scale, acc_row in zip(sums, scales, self.load_all(accs))
            ]
        self.store_all(accs, sums)

    def _chunks(
        self,
        code_base: ir.Value,
        x_base: ir.Value,
        chunks: range,
        sums: list[list[ir.Value]] | None,
        scales: list[ir.Value] | None,
    ) -> list[list[ir.Value]]:
        """sums[r][m] += code * x (code * scale * x when scales are given) over the chunks;
        sums None starts from a plain product."""
        e, b, layout = self.e, self.e.b, self.layout
        parts = layout.codes_per_chunk // layout.lanes
        sums = sums or [[None] * self.acts for _ in range(self.rows)]
        for c in chunks:
            x_offset = b.add(x_base, e.i64(c * layout.codes_per_chunk))
            xs = [
                [
                    e.load_vector(self.x_floats[m], b.add(x_offset, e.i64(p * layout.lanes)), F32)
                    for p in range(parts)
                ]
                for m in range(self.acts)
            ]
            for r in range(self.rows):
                codes = self._codes(r, b.add(code_base, e.i64(c * layout.lanes)))
                if scales is not None:
                    codes = [b.fmul(code, scales[r], flags=FLAGS) for code in codes]
                for m in range(self.acts):
                    for code, xv in zip(codes, xs[m], strict=True):
                        sums[r][m] = e.madd(code, xv, sums[r][m])
        return sums
