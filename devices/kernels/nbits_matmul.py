"""`y = x @ W` for ONNX Runtime's `MatMulNBits` weights, read in place from numpy buffers.

Streamed blocks arrive as plain buffers (the prefetch window's), not ORT initializers: ORT's own
`MatMulNBits` with weights as graph inputs skips pre-packing and runs ~100x slower, and building
a session per streamed block costs 40-70 ms. This kernel reads ORT's exact layout (see
`quant/blockwise.py`: B uint8 [N, n_blocks, block_size*bits/8], scales float32 [N*n_blocks],
zero points None or packed uint8). With `activations="fp32"` it computes in fp32 like
`accuracy_level=0`; with `"int16"` (AVX-512 VNNI CPUs) x is rounded per block to 15 bits (error
<= block max |x| / 32512, ~100x finer than accuracy_level 4) and multiplied with int8 dot
products: half the instructions. `"auto"` (the default) takes int16 where the CPU has VNNI:
measured 1.04-1.33x faster one-token GEMVs on real block shapes and the same greedy tokens
(BENCHMARKS.md, "Built but unreachable"); each row's result is exact integer sums, so it does
not depend on how many rows share a call.

Example:
    >>> mm = NBitsMatMul(NBitsSpec(K=2048, N=8192, bits=4, block_size=32))
    >>> y = mm(x, q.packed, q.scales, q.zero_points)  # x: [M, 2048] float32 -> y: [M, 8192]
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import Any

import numpy as np

from devices.kernels import jit
from devices.kernels.nbits_activations import PreparedX, prepare_fp32, prepare_int16
from devices.kernels.nbits_ir import (
    ACTIVATION_KINDS,
    FUNCTION_NAME,
    PREPARE_FP32_NAME,
    PREPARE_NAME,
    ZERO_POINT_KINDS,
    NBitsLayout,
    build_nbits_module,
    can_permute,
    can_vnni,
    kernel_lanes,
)
from devices.kernels.pool import get_pool, physical_cores
from edge.errors import ConfigError, EdgeError

# Below this many code bytes per thread, waking a worker (~10 us) costs more than it saves.
MIN_BYTES_PER_THREAD = 256 * 1024
# Thread shares start on multiples of this many rows so tiles stay whole and outputs rarely
# share a cache line.
_ROW_ALIGN = 16

_P, _I = ctypes.c_void_p, ctypes.c_int64
_SIGNATURE = ctypes.CFUNCTYPE(None, _P, _I, _P, _I, _P, _I, _P, _P, _P, _P, _I, _I, _I, _I)
_PREPARE_SIGNATURE = ctypes.CFUNCTYPE(None, _P, _I, _I, _I, _P, _I, _P, _I, _P)
_PREPARE_FP32_SIGNATURE = ctypes.CFUNCTYPE(None, _P, _I, _I, _I, _P, _I, _P)


def int16_supported(target: jit.HostTarget | None = None) -> bool:
    """Whether `activations='int16'` runs here (x86 with AVX-512 VNNI)."""
    target = target or jit.host_target()
    return can_vnni(target.features, target.triple, target.lanes)


def resolve_activations(activations: str, target: jit.HostTarget | None = None) -> str:
    """The x format `activations` means on `target`: "auto" is int16 where VNNI runs it."""
    if activations not in ("auto", *ACTIVATION_KINDS):
        raise ConfigError(
            f"NBitsMatMul activations must be one of {['auto', *ACTIVATION_KINDS]}, "
            f"got {activations!r}"
        )
    if activations != "auto":
        return activations
    return "int16" if int16_supported(target) else "fp32"


class KernelInputError(EdgeError, ValueError):
    """An array handed to a kernel has the wrong dtype, shape or memory layout."""


def zero_point_kind(zero_points: np.ndarray | None) -> str:
    """ "none" or "uint8": which kernel variant a zero-point array needs."""
    return "none" if zero_points is None else "uint8"


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise ConfigError(f"NBitsSpec.{name} must be one of {list(allowed)}, got {value!r}")


@dataclass(frozen=True)
class NBitsSpec:
    """The weight a kernel is built for: W [K, N] as `x @ W`, bits, block size, zero points."""

    K: int
    N: int
    bits: int = 4
    block_size: int = 32
    zero_points: str = "none"

    def __post_init__(self) -> None:
        for name in ("K", "N"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ConfigError(f"NBitsSpec.{name} must be a positive int, got {value!r}")
        _check_choice("bits", self.bits, (4, 8))
        _check_choice("block_size", self.block_size, (16, 32, 64, 128, 256))
        _check_choice("zero_points", self.zero_points, ZERO_POINT_KINDS)

    @property
    def n_blocks(self) -> int:
        return -(-self.K // self.block_size)

    @property
    def packed_shape(self) -> tuple[int, int, int]:
        return (self.N, self.n_blocks, self.block_size * self.bits // 8)

    @property
    def zero_points_size(self) -> int:
        if self.zero_points == "none":
            return 0
        return self.N * -(-self.n_blocks * self.bits // 8)

    @classmethod
    def of(cls, weight: Any) -> NBitsSpec:
        """The spec of a `quant.blockwise.QuantizedWeight` (duck-typed: no quant import)."""
        return cls(
            weight.K, weight.N, weight.bits, weight.block_size, zero_point_kind(weight.zero_points)
        )


class NBitsMatMul:
    """`y = x @ dequantize(W)` for one weight shape, compiled for this CPU on first use.

    Output rows are split across `threads` threads of a process-wide pool (default: physical
    cores). One instance may serve many weights of the same spec (the streamed blocks of a
    model): the weight buffers are arguments of each call. A call costs ~10 us of Python on
    top of the kernel; everything that does not depend on the arguments is fixed here.
    """

    def __init__(
        self,
        spec: NBitsSpec,
        threads: int | None = None,
        activations: str = "auto",
        target: jit.HostTarget | None = None,
        min_bytes_per_thread: int = MIN_BYTES_PER_THREAD,
    ) -> None:
        if threads is None:
            threads = physical_cores()
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"NBitsMatMul threads must be a positive int, got {threads!r}")
        if (
            isinstance(min_bytes_per_thread, bool)
            or not isinstance(min_bytes_per_thread, int)
            or min_bytes_per_thread < 0
        ):
            raise ConfigError(
                "NBitsMatMul min_bytes_per_thread must be an int >= 0, got "
                f"{min_bytes_per_thread!r}"
            )
        target = target or jit.host_target()
        activations = resolve_activations(activations, target)
        if activations == "int16" and not int16_supported(target):
            raise ConfigError(
                "NBitsMatMul activations='int16' needs AVX-512 VNNI, which this "
                f"CPU ({target.cpu}) lacks; use activations='fp32'"
            )
        self.spec, self.threads = spec, threads
        lanes = (
            16 if activations == "int16" else kernel_lanes(spec.bits, spec.block_size, target.lanes)
        )
        permute = can_permute(target.features, target.triple, lanes)
        self.layout = NBitsLayout(
            spec.bits, spec.block_size, spec.zero_points, lanes, permute, activations
        )
        module = jit.get_or_compile(
            ("nbits", self.layout, target),
            lambda t: build_nbits_module(self.layout, t.vector_registers),
            target,
        )
        self._module = module  # keeps the machine code alive as long as this object
        self._kernel = _SIGNATURE(module.address(FUNCTION_NAME))
        if activations == "int16":
            self._prepare = _PREPARE_SIGNATURE(module.address(PREPARE_NAME))
        else:
            self._prepare = _PREPARE_FP32_SIGNATURE(module.address(PREPARE_FP32_NAME))
        self._checks = _weight_checks(spec)
        packed_bytes = spec.N * spec.n_blocks * spec.block_size * spec.bits // 8
        used = max(
            1, min(threads, packed_bytes // max(1, min_bytes_per_thread), -(-spec.N // _ROW_ALIGN))
        )
        self._shares = list(pairwise(_row_bounds(spec.N, used)))

    def __call__(
        self,
        x: np.ndarray,
        packed: np.ndarray,
        scales: np.ndarray,
        zero_points: np.ndarray | None = None,
        out: np.ndarray | None = None,
    ) -> np.ndarray:
        """x float32 [M, K] -> out float32 [M, N]; weight arrays must be C-contiguous.

        x is laid out afresh by every call (a few us): the forward fuses the projections that
        share an input (QKV, gate/up), so there is no second weight to reuse a layout for.
        """
        spec = self.spec
        prepared = self._prepare_x(x)
        M = prepared.rows
        packed_check, scales_check, zp_check = self._checks
        if out is None:
            out = np.empty((M, spec.N), np.float32)
        else:
            _check_out(out, M, spec.N)
        args = (
            prepared.x.ctypes.data,
            prepared.x_stride,
            prepared.lane_scales.ctypes.data,
            prepared.lane_stride,
            prepared.xsum.ctypes.data,
            M,
            packed_check.pointer(packed),
            scales_check.pointer(scales),
            zp_check.pointer(zero_points),
            out.ctypes.data,
            spec.N,
        )
        if len(self._shares) == 1:
            self._kernel(*args, 0, spec.N, spec.n_blocks)
        else:
            get_pool(len(self._shares)).run(
                [partial(self._kernel, *args, lo, hi, spec.n_blocks) for lo, hi in self._shares]
            )
        return out

    def _prepare_x(self, x: np.ndarray) -> PreparedX:
        """x float32 [M, K] in the kernel's layout (see `nbits_activations`)."""
        _check_x(x, self.spec.K)
        if self.layout.activations == "int16":
            return prepare_int16(x, self.layout, self.spec.n_blocks, self._prepare)
        return prepare_fp32(x, self.layout, self.spec.n_blocks, self._prepare)

    def assembly(self) -> str:
        """The compiled machine code as text, for inspection (and the no-AMX test)."""
        return self._module.assembly()


def _row_bounds(N: int, threads: int) -> list[int]:
    """[0, ..., N] cut into `threads` nearly equal shares starting on multiples of 16 rows."""
    cuts = [round(N * i / threads / _ROW_ALIGN) * _ROW_ALIGN for i in range(1, threads)]
    return [0, *sorted(min(c, N) for c in cuts), N]


def _check_x(x: np.ndarray, K: int) -> int:
    if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != K:
        raise KernelInputError(f"x must be a float32 [M, {K}] array, got {_describe(x)}")
    if x.shape[0] < 1:
        raise KernelInputError(f"x must have at least one row, got shape {x.shape}")
    return x.shape[0]


def _check_out(out: np.ndarray, M: int, N: int) -> None:
    if (
        not isinstance(out, np.ndarray)
        or out.dtype != np.float32
        or out.shape != (M, N)
        or not out.flags.c_contiguous
        or not out.flags.writeable
    ):
        raise KernelInputError(
            f"out must be a writeable C-contiguous float32 [{M}, {N}] array, got {_describe(out)}"
        )


@dataclass(frozen=True)
class _BufferCheck:
    """One weight buffer read in place: wrong layouts are errors, never silent copies."""

    name: str
    dtype: np.dtype | None  # None: the buffer must be absent (implicit zero points)
    shapes: frozenset[tuple[int, ...]]

    def pointer(self, array: Any) -> int | None:
        if self.dtype is None:
            if array is not None:
                raise KernelInputError(
                    f"{self.name} must be None for a kernel built with zero_points='none', got "
                    f"{_describe(array)}; build NBitsMatMul with NBitsSpec.of(weight)"
                )
            return None
        if (
            type(array) is not np.ndarray
            or array.dtype != self.dtype
            or array.shape not in self.shapes
            or not array.flags.c_contiguous
        ):
            if array is None:
                raise KernelInputError(
                    f"{self.name} is None but the kernel was built for {self.dtype} {self.name}"
                )
            wanted = " or ".join(str(list(s)) for s in sorted(self.shapes))
            raise KernelInputError(
                f"{self.name} must be a C-contiguous {self.dtype} array of shape {wanted}, "
                f"got {_describe(array)}"
            )
        return array.ctypes.data


def _weight_checks(spec: NBitsSpec) -> tuple[_BufferCheck, _BufferCheck, _BufferCheck]:
    packed_size = spec.N * spec.n_blocks * spec.block_size * spec.bits // 8
    scales_size = spec.N * spec.n_blocks
    zp_dtype = {"none": None, "uint8": np.dtype(np.uint8)}
    return (
        _BufferCheck("packed", np.dtype(np.uint8), frozenset({spec.packed_shape, (packed_size,)})),
        _BufferCheck(
            "scales", np.dtype(np.float32), frozenset({(spec.N, spec.n_blocks), (scales_size,)})
        ),
        _BufferCheck(
            "zero_points", zp_dtype[spec.zero_points], frozenset({(spec.zero_points_size,)})
        ),
    )


def _describe(array: Any) -> str:
    if isinstance(array, np.ndarray):
        layout = "" if array.flags.c_contiguous else " (not C-contiguous)"
        return f"{array.dtype} {list(array.shape)}{layout}"
    return type(array).__name__


__all__ = [
    "ACTIVATION_KINDS",
    "ZERO_POINT_KINDS",
    "KernelInputError",
    "NBitsMatMul",
    "NBitsSpec",
    "int16_supported",
    "resolve_activations",
    "zero_point_kind",
]
