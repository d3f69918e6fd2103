"""int16-activation tiles: int8 dot products (AVX-512 VNNI `vpdpbusd`) on the packed codes.

The caller rounds x per block to integers xq = hi * 128 + lo (|xq| <= 16256, hi and lo int8),
with one float scale per block, and lays each out in the byte order of the codes. One step
reads 64 code bytes per output row (128 int4 codes or 64 int8 ones): 4-bit codes are split into
a low-nibble and a high-nibble register (even and odd k), and `vpdpbusd` multiplies 4 unsigned
code bytes by 4 signed x bytes and adds them into each of 16 int32 lanes: 64 products per
instruction, against 16 per float FMA. Per lane, hi * 128 + lo is exact in int32 and in float
(< 2**24), and is scaled by weight scale x activation scale of the lane's block.

An int4 step costs 13 instructions per row (fp32: 28 for the same 128 codes). The last,
partial step of a row (when K is not a multiple of 64 bytes of codes) uses byte-masked loads, so
nothing past the row's blocks is read.
"""

from __future__ import annotations

from llvmlite import ir

from devices.kernels.irbuild import F32, I1, I8, I32, Emitter
from devices.kernels.nbits_layout import VNNI_GROUP_BYTES, NBitsLayout
from devices.kernels.nbits_tile import TileEmitter

_DOT = "llvm.x86.avx512.vpdpbusd.512"
_LANES = 16
_HIGH_SHIFT = 7  # xq = hi * 2**7 + lo


class VnniTile(TileEmitter):
    """One int16-activation tile over all 64-byte steps of K."""

    def __init__(self, module: ir.Module, layout: NBitsLayout, rows: int, acts: int) -> None:
        super().__init__(module, layout, rows, acts)
        self.vi32 = ir.VectorType(I32, _LANES)
        self.dot = module.globals.get(_DOT) or ir.Function(
            module, ir.FunctionType(self.vi32, [self.vi32] * 3), _DOT
        )
        group = layout.codes_per_group
        # Blocks per step (1 when a block spans whole steps) and steps per block (likewise).
        self.blocks_per_group = max(1, group // layout.block_size)
        self.groups_per_block = max(1, layout.block_size // group)

    def main_loop(self) -> list[list[list[ir.Value]]]:
        e, b, a, layout = self.e, self.e.b, self.a, self.layout
        accs = self.new_sums()
        shift = e.i64(layout.codes_per_group.bit_length() - 1)
        codes = b.mul(a.n_blocks, e.i64(layout.block_size))
        whole = b.lshr(codes, shift)
        e.count_loop(e.i64(0), whole, 1, lambda g: self._group(g, accs, None))
        if self.blocks_per_group > 1:  # a last step with fewer blocks than a whole one
            steps = b.lshr(b.add(codes, e.i64(layout.codes_per_group - 1)), shift)
            bpg = e.i64(self.blocks_per_group)
            e.count_loop(
                whole, steps, 1, lambda g: self._group(g, accs, b.sub(a.n_blocks, b.mul(g, bpg)))
            )
        return [self.load_all(accs)]

    def _group(
        self, group: ir.Value, accs: list[list[ir.Value]], valid_blocks: ir.Value | None
    ) -> None:
        """Add step `group`'s products into accs; valid_blocks set means a partial step."""
        e, b, layout = self.e, self.e.b, self.layout
        offset = b.mul(group, e.i64(VNNI_GROUP_BYTES))
        first_block = (
            b.mul(group, e.i64(self.blocks_per_group))
            if self.groups_per_block == 1
            else b.udiv(group, e.i64(self.groups_per_block))
        )
        self.prefetch_step(offset, VNNI_GROUP_BYTES, first_block)
        valid_bytes = (
            None if valid_blocks is None else b.mul(valid_blocks, e.i64(layout.block_bytes))
        )
        x_step = b.mul(group, e.i64(VNNI_GROUP_BYTES * layout.x_parts))
        xs = [
            [
                self._load_i32(self.x_rows[m], b.add(x_step, e.i64(p * VNNI_GROUP_BYTES)))
                for p in range(layout.x_parts)
            ]
            for m in range(self.acts)
        ]
        lane_step = b.mul(group, e.i64(_LANES))
        x_scales = [e.load_vector(row, lane_step, F32) for row in self.lane_rows]
        half = layout.x_parts // 2
        zero = ir.Constant(self.vi32, [0] * _LANES)
        for r in range(self.rows):
            codes = self._codes(r, offset, valid_bytes)
            w_scale = self._weight_scales(r, first_block, valid_blocks)
            for m in range(self.acts):
                high, low = zero, zero
                for code, x_high, x_low in zip(codes, xs[m][:half], xs[m][half:], strict=True):
                    high = b.call(self.dot, [high, code, x_high])
                    low = b.call(self.dot, [low, code, x_low])
                exact = b.add(b.shl(high, self._splat_i32(_HIGH_SHIFT)), low)
                scale = b.fmul(w_scale, x_scales[m])
                slot = accs[r][m]
                b.store(e.madd(b.sitofp(exact, e.vf), scale, b.load(slot)), slot)

    def _codes(self, r: int, offset: ir.Value, valid_bytes: ir.Value | None) -> list[ir.Value]:
        """One step's code bytes as int32 vectors: [low nibbles, high nibbles] or [bytes]."""
        e, b = self.e, self.e.b
        v8 = ir.VectorType(I8, VNNI_GROUP_BYTES)
        pointer = b.gep(self.packed_rows[r], [offset])
        if valid_bytes is None:
            raw = b.load(b.bitcast(pointer, v8.as_pointer()), align=1)
        else:
            raw = _masked_load(e, pointer, v8, valid_bytes)
        if self.layout.bits == 8:
            return [b.bitcast(raw, self.vi32)]
        nibble = ir.Constant(v8, [15] * VNNI_GROUP_BYTES)
        low = b.and_(raw, nibble)
        high = b.lshr(raw, ir.Constant(v8, [4] * VNNI_GROUP_BYTES))
        return [b.bitcast(low, self.vi32), b.bitcast(high, self.vi32)]

    def _weight_scales(
        self, r: int, first_block: ir.Value, valid_blocks: ir.Value | None
    ) -> ir.Value:
        """Each lane's weight scale: the scale of the block its codes belong to."""
        e, b = self.e, self.e.b
        row = self.scale_rows[r]
        count = self.blocks_per_group
        if count == 1:
            return e.splat(b.load(b.gep(row, [first_block]), align=4))
        vector = ir.VectorType(F32, count)
        pointer = b.gep(row, [first_block])
        if valid_blocks is None:
            scales = b.load(b.bitcast(pointer, vector.as_pointer()), align=4)
        else:
            scales = _masked_load(e, pointer, vector, valid_blocks)
        spread = [lane * count // _LANES for lane in range(_LANES)]
        return b.shuffle_vector(scales, scales, ir.Constant(self.vi32, spread))

    def _load_i32(self, base: ir.Value, offset: ir.Value) -> ir.Value:
        pointer = self.e.b.gep(base, [offset])
        return self.e.b.load(self.e.b.bitcast(pointer, self.vi32.as_pointer()), align=1)

    def _splat_i32(self, value: int) -> ir.Constant:
        return ir.Constant(self.vi32, [value] * _LANES)


def _masked_load(e: Emitter, pointer: ir.Value, vector: ir.VectorType, valid: ir.Value) -> ir.Value:
    """The first `valid` elements at pointer, zeros after; masked-off memory is never touched."""
    b, count = e.b, vector.count
    element = vector.element
    suffix = f"v{count}{'f32' if element == F32 else 'i8'}"
    name = f"llvm.masked.load.{suffix}.p0"
    mask_type = ir.VectorType(I1, count)
    fn = b.module.globals.get(name) or ir.Function(
        b.module,
        ir.FunctionType(vector, [vector.element.as_pointer(), I32, mask_type, vector]),
        name,
    )
    lanes = ir.Constant(ir.VectorType(I32, count), list(range(count)))
    limit = e.splat(b.trunc(valid, I32), count)
    mask = b.icmp_unsigned("<", lanes, limit)
    zeros = ir.Constant(vector, [0.0 if element == F32 else 0] * count)
    pointer = b.bitcast(pointer, vector.element.as_pointer())
    return b.call(fn, [pointer, ir.Constant(I32, 4 if element == F32 else 1), mask, zeros])
