"""LLVM IR that lays x out for the kernels: numpy needs 10-45 us (a dozen small array ops)
for what this does in ~1 us, next to GEMVs of 50-500 us.

    void prepare_int16(const float *x, int64 M, int64 x_stride, int64 n_blocks, int8 *parts,
                       int64 parts_stride, float *lane_scales, int64 lane_stride, float *xsum)

x is [M, n_blocks * block_size] (zero-padded); parts and lane_scales must come zeroed (the
padding of a last partial step stays zero). Per block: scale = max |x| / 16256, xq =
rint(x / scale), hi = (xq + 64) >> 7 and lo = xq - 128 * hi (|hi| <= 127, |lo| <= 64), stored
at their code's byte position in the step (4 bits: even k in the first 64 bytes, odd k in the
next); every VNNI lane of the block gets the scale, and xsum the block's sum of scale * xq.
"""

from __future__ import annotations

from llvmlite import ir

from devices.kernels.irbuild import F32, FLAGS, I8, I32, I64, Emitter
from devices.kernels.nbits_activations import INT16_LEVELS
from devices.kernels.nbits_layout import VNNI_GROUP_BYTES, NBitsLayout

PREPARE_NAME = "prepare_int16"
PREPARE_FP32_NAME = "prepare_fp32"
_LANES = 16


def _intrinsic(module: ir.Module, name: str, vector: ir.VectorType, arity: int) -> ir.Function:
    full = f"{name}.v{vector.count}f32"
    return module.globals.get(full) or ir.Function(
        module, ir.FunctionType(vector, [vector] * arity), full
    )


def add_prepare_int16(module: ir.Module, layout: NBitsLayout) -> ir.Function:
    f32p, i8p = F32.as_pointer(), I8.as_pointer()
    fn = ir.Function(
        module,
        ir.FunctionType(ir.VoidType(), [f32p, I64, I64, I64, i8p, I64, f32p, I64, f32p]),
        PREPARE_NAME,
    )
    x, M, x_stride, n_blocks, parts, parts_stride, lane_scales, lane_stride, xsum = fn.args
    e = Emitter(ir.IRBuilder(fn.append_basic_block("entry")), _LANES)
    b = e.b
    fabs = _intrinsic(module, "llvm.fabs", e.vf, 1)
    maxnum = _intrinsic(module, "llvm.maxnum", e.vf, 2)
    rint = _intrinsic(module, "llvm.rint", e.vf, 1)
    bs, vectors = layout.block_size, layout.block_size // _LANES
    codes_per_lane = layout.codes_per_group // _LANES

    def row(m: ir.Value) -> None:
        x_row = b.gep(x, [b.mul(m, x_stride)])
        parts_row = b.gep(parts, [b.mul(m, parts_stride)])
        lanes_row = b.gep(lane_scales, [b.mul(m, lane_stride)])
        xsum_row = b.gep(xsum, [b.mul(m, n_blocks)])

        def block(blk: ir.Value) -> None:
            first = b.mul(blk, e.i64(bs))
            values = [
                e.load_vector(x_row, b.add(first, e.i64(v * _LANES)), F32) for v in range(vectors)
            ]
            peak = b.call(fabs, [values[0]])
            for value in values[1:]:
                peak = b.call(maxnum, [peak, b.call(fabs, [value])])
            amax = _hmax(e, maxnum, peak)
            scale = b.fmul(amax, ir.Constant(F32, 1.0 / INT16_LEVELS))
            positive = b.fcmp_ordered(">", amax, ir.Constant(F32, 0.0))
            inverse = b.select(
                positive, b.fdiv(ir.Constant(F32, float(INT16_LEVELS)), amax), ir.Constant(F32, 0.0)
            )
            total = None
            for v, value in enumerate(values):
                xq = b.fptosi(b.call(rint, [b.fmul(value, e.splat(inverse))]), e.vi)
                total = xq if total is None else b.add(total, xq)
                high = b.ashr(b.add(xq, _splat(e, 64)), _splat(e, 7))
                low = b.sub(xq, b.shl(high, _splat(e, 7)))
                _store_codes(e, layout, parts_row, b.add(first, e.i64(v * _LANES)), high, low)
            b.store(b.fmul(e.hsum(b.sitofp(total, e.vf)), scale), b.gep(xsum_row, [blk]))
            lane_first = b.udiv(first, e.i64(codes_per_lane))
            count = bs // codes_per_lane  # lanes of this block: 2 .. 64
            width = min(count, _LANES)
            splat = e.splat(scale, width)
            for offset in range(0, count, width):
                pointer = b.gep(lanes_row, [b.add(lane_first, e.i64(offset))])
                b.store(splat, b.bitcast(pointer, splat.type.as_pointer()), align=4)

        e.count_loop(e.i64(0), n_blocks, 1, block)

    e.count_loop(e.i64(0), M, 1, row)
    b.ret_void()
    return fn


def _splat(e: Emitter, value: int) -> ir.Constant:
    return ir.Constant(e.vi, [value] * _LANES)


def _hmax(e: Emitter, maxnum: ir.Function, vector: ir.Value) -> ir.Value:
    b = e.b
    width = vector.type.count
    while width > 1:
        width //= 2
        mask = ir.VectorType(I32, width)
        low, high = (
            b.shuffle_vector(vector, vector, ir.Constant(mask, list(h)))
            for h in (range(width), range(width, 2 * width))
        )
        vector = b.call(_intrinsic(b.module, "llvm.maxnum", low.type, 2), [low, high])
    return b.extract_element(vector, ir.Constant(I32, 0))


def _store_codes(
    e: Emitter, layout: NBitsLayout, parts: ir.Value, code: ir.Value, high: ir.Value, low: ir.Value
) -> None:
    """Store 16 consecutive codes' hi and lo bytes (code = index of the first in the row)."""
    b = e.b
    group = layout.codes_per_group
    step = b.udiv(code, e.i64(group))
    within = b.urem(code, e.i64(group))
    base = b.mul(step, e.i64(VNNI_GROUP_BYTES * layout.x_parts))
    v16 = ir.VectorType(I8, _LANES)
    for index, half in enumerate((high, low)):
        narrow = b.trunc(half, v16)
        if layout.bits == 8:
            offset = b.add(base, b.add(e.i64(index * VNNI_GROUP_BYTES), within))
            pointer = b.bitcast(b.gep(parts, [offset]), v16.as_pointer())
            b.store(narrow, pointer, align=1)
            continue
        byte = b.udiv(within, e.i64(2))  # code 2j and 2j + 1 share byte j
        v8 = ir.VectorType(I8, _LANES // 2)
        for parity in (0, 1):
            picked = b.shuffle_vector(
                narrow,
                narrow,
                ir.Constant(ir.VectorType(I32, _LANES // 2), list(range(parity, _LANES, 2))),
            )
            part = (2 * index + parity) * VNNI_GROUP_BYTES
            offset = b.add(base, b.add(e.i64(part), byte))
            b.store(picked, b.bitcast(b.gep(parts, [offset]), v8.as_pointer()), align=1)


def add_prepare_fp32(module: ir.Module, layout: NBitsLayout) -> ir.Function:
    """void prepare_fp32(const float *x, int64 M, int64 x_stride, int64 n_blocks, float *out,
    int64 out_stride, float *xsum): per-block sums of x and, for 4 bits, x de-interleaved per
    chunk of 2 * lanes floats (even k, then odd k) into out (untouched for 8 bits)."""
    f32p = F32.as_pointer()
    fn = ir.Function(
        module,
        ir.FunctionType(ir.VoidType(), [f32p, I64, I64, I64, f32p, I64, f32p]),
        PREPARE_FP32_NAME,
    )
    x, M, x_stride, n_blocks, out, out_stride, xsum = fn.args
    lanes = layout.lanes
    e = Emitter(ir.IRBuilder(fn.append_basic_block("entry")), lanes)
    b = e.b
    width = 2 * lanes if layout.bits == 4 else lanes  # floats per step
    masks = [
        (ir.Constant(ir.VectorType(I32, lanes), list(range(parity, 2 * lanes, 2))), parity * lanes)
        for parity in (0, 1)
    ]  # 4 bits: (even k, at 0), (odd k, at lanes)

    def row(m: ir.Value) -> None:
        x_row = b.gep(x, [b.mul(m, x_stride)])
        out_row = b.gep(out, [b.mul(m, out_stride)])

        def block(blk: ir.Value) -> None:
            first = b.mul(blk, e.i64(layout.block_size))
            total = e.variable(e.zeros())

            def step(offset: ir.Value) -> None:
                values = [
                    e.load_vector(x_row, b.add(offset, e.i64(v * lanes)), F32)
                    for v in range(width // lanes)
                ]
                acc = b.load(total)
                for value in values:
                    acc = b.fadd(acc, value, flags=FLAGS)
                b.store(acc, total)
                if layout.bits == 4:
                    for mask, shift in masks:
                        picked = b.shuffle_vector(values[0], values[1], mask)
                        pointer = b.gep(out_row, [b.add(offset, e.i64(shift))])
                        b.store(picked, b.bitcast(pointer, e.vf.as_pointer()), align=4)

            e.count_loop(first, b.add(first, e.i64(layout.block_size)), width, step)
            b.store(e.hsum(b.load(total)), b.gep(xsum, [b.add(b.mul(m, n_blocks), blk)]))

        e.count_loop(e.i64(0), n_blocks, 1, block)

    e.count_loop(e.i64(0), M, 1, row)
    b.ret_void()
    return fn
