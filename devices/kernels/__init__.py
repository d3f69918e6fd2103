"""Kernels of our own, JIT-compiled with llvmlite for the host's instruction set.

They exist where ONNX Runtime has no fast path for the data as edge holds it: streamed weight
blocks live in plain numpy buffers (the prefetch window's), and ORT's `MatMulNBits` with
weights as graph inputs skips pre-packing (~100x slower), while a session per streamed block
costs 40-70 ms to build. `NBitsMatMul` reads ORT's int4/int8 block-wise layout in place, in
fp32 (ORT's accuracy_level 0 math) or, on AVX-512 VNNI CPUs, with x rounded to 15 bits per block
(`activations="int16"`, half the instructions; the default "auto" takes it where it runs).

Example:
    >>> from devices.kernels import NBitsMatMul, NBitsSpec
    >>> matmul = NBitsMatMul(NBitsSpec.of(q))  # q: quant.blockwise.QuantizedWeight
    >>> y = matmul(x, q.packed, q.scales, q.zero_points)  # x [M, K] float32 -> y [M, N]
"""

from devices.kernels.jit import HostTarget, KernelCompileError, host_target
from devices.kernels.nbits_matmul import (
    KernelInputError,
    NBitsMatMul,
    NBitsSpec,
    int16_supported,
    resolve_activations,
    zero_point_kind,
)

__all__ = [
    "HostTarget",
    "KernelCompileError",
    "KernelInputError",
    "NBitsMatMul",
    "NBitsSpec",
    "host_target",
    "int16_supported",
    "resolve_activations",
    "zero_point_kind",
]
