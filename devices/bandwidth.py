"""Streaming read bandwidth from DRAM: the ceiling of every weight-bound kernel (GEMV, decode).

A JIT-compiled loop sums a buffer far larger than the last-level cache with the host's widest
vectors, split across threads. Some CPUs have a huge L3 (480 MiB shared on the VMs this was
written on, ~96 MB effectively per thread), so the default buffer is 512 MiB; a smaller one
measures a cache level instead.

Example:
    >>> gbps = measure_read_bandwidth(threads=2)  # ~29 GB/s on a 2-vCPU Sapphire Rapids VM
"""

from __future__ import annotations

import ctypes
import time
from functools import partial

import numpy as np
from llvmlite import ir

from devices.kernels import jit
from devices.kernels.pool import get_pool
from edge.errors import ConfigError

DEFAULT_SIZE_BYTES = 512 * 1024 * 1024
_UNROLL = 4  # independent accumulators, so the adds never wait on each other
_FUNCTION = "read_sum"
_SIGNATURE = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_void_p, ctypes.c_int64)


def _build_read_sum(target: jit.HostTarget) -> ir.Module:
    """float read_sum(const float *p, int64 n): sum of n floats, n a multiple of unroll*lanes."""
    f32, i64 = ir.FloatType(), ir.IntType(64)
    vector = ir.VectorType(f32, target.lanes)
    module = ir.Module(name="read_bandwidth")
    fn = ir.Function(module, ir.FunctionType(f32, [f32.as_pointer(), i64]), _FUNCTION)
    data, n = fn.args
    entry, loop, done = (fn.append_basic_block(name) for name in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    step = _UNROLL * target.lanes
    b.cbranch(b.icmp_signed(">", n, ir.Constant(i64, 0)), loop, done)
    b.position_at_end(loop)
    index = b.phi(i64)
    accs = [b.phi(vector) for _ in range(_UNROLL)]
    new_accs = []
    for u, acc in enumerate(accs):
        pointer = b.gep(data, [b.add(index, ir.Constant(i64, u * target.lanes))])
        value = b.load(b.bitcast(pointer, vector.as_pointer()), align=4)
        new_accs.append(b.fadd(acc, value, flags=("reassoc",)))
    next_index = b.add(index, ir.Constant(i64, step))
    b.cbranch(b.icmp_signed("<", next_index, n), loop, done)
    zero = ir.Constant(vector, [0.0] * target.lanes)
    index.add_incoming(ir.Constant(i64, 0), entry)
    index.add_incoming(next_index, loop)
    for acc, new in zip(accs, new_accs, strict=True):
        acc.add_incoming(zero, entry)
        acc.add_incoming(new, loop)
    b.position_at_end(done)
    finals = []
    for new in new_accs:
        final = b.phi(vector)
        final.add_incoming(zero, entry)
        final.add_incoming(new, loop)
        finals.append(final)
    total = finals[0]
    for final in finals[1:]:
        total = b.fadd(total, final)
    lanes = [b.extract_element(total, ir.Constant(ir.IntType(32), i)) for i in range(target.lanes)]
    result = lanes[0]
    for lane in lanes[1:]:
        result = b.fadd(result, lane)
    b.ret(result)
    return module


def _validate(threads: int, size_bytes: int, repeats: int) -> None:
    for name, value, low in (
        ("threads", threads, 1),
        ("size_bytes", size_bytes, 4096),
        ("repeats", repeats, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(
                f"measure_read_bandwidth {name} must be an int >= {low}, got {value!r}"
            )


def measure_read_bandwidth(
    threads: int, size_bytes: int = DEFAULT_SIZE_BYTES, repeats: int = 3
) -> float:
    """Best streaming read rate in GB/s (1e9 bytes/s) over `repeats` passes of `size_bytes`.

    The buffer is split into one contiguous share per thread; one untimed pass first faults
    the pages in. Use at least 512 MiB for DRAM on CPUs with large caches.
    """
    _validate(threads, size_bytes, repeats)
    target = jit.host_target()
    kernel = _SIGNATURE(jit.get_or_compile("read_bandwidth", _build_read_sum).address(_FUNCTION))
    step = _UNROLL * target.lanes * threads
    count = max(step, size_bytes // 4 // step * step)  # floats, a whole number of steps
    data = np.ones(count, np.float32)  # written, so every page is really mapped
    share = count // threads
    base = data.ctypes.data
    tasks = [partial(kernel, base + i * share * 4, share) for i in range(threads)]
    pool = get_pool(threads)
    pool.run(tasks)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        pool.run(tasks)
        best = min(best, time.perf_counter() - start)
    return data.nbytes / best / 1e9
