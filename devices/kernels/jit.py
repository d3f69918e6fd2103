"""llvmlite setup: compile IR for the host's own instruction set, once per process per key.

Kernels are written as `llvmlite.ir` modules with explicit vector types whose width comes from
`HostTarget.lanes` (16 floats with AVX-512, 8 with AVX/AVX2, 4 with NEON or SSE). The target
machine gets the host CPU name and feature string with every AMX feature removed: AMX tile code
dies with SIGILL on some VMs that advertise it (see ANCHORS: ggml's AMX path), and nothing here
needs it.

Example:
    >>> target = host_target()
    >>> module = get_or_compile("my_kernel", build_ir_module)  # build(target) -> ir.Module
    >>> address = module.address("my_kernel")
"""

from __future__ import annotations

import platform
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cache, lru_cache

import llvmlite.binding as llvm
from llvmlite import ir

from edge.errors import EdgeError

# Feature names never handed to LLVM, whatever the CPU advertises.
_BANNED_FEATURE_PREFIXES = ("amx",)


class KernelCompileError(EdgeError, RuntimeError):
    """LLVM rejected or failed to compile a generated kernel (a bug in edge, not in the input)."""


@dataclass(frozen=True)
class HostTarget:
    """What the JIT compiles for: LLVM's CPU name, its feature string and the vector shape.

    `lanes` is the float32 vector width the kernels use; `vector_registers` bounds how many
    accumulators a kernel may keep live (32 with AVX-512 or NEON, 16 with AVX2 or SSE).
    """

    triple: str
    cpu: str
    features: str
    lanes: int
    vector_registers: int

    def __post_init__(self) -> None:
        if self.lanes not in (4, 8, 16):
            raise ValueError(f"HostTarget.lanes must be one of [4, 8, 16], got {self.lanes}")
        if self.vector_registers not in (16, 32):
            raise ValueError(
                f"HostTarget.vector_registers must be one of [16, 32], got {self.vector_registers}"
            )
        if any(f"+{p}" in self.features for p in _BANNED_FEATURE_PREFIXES):
            raise ValueError(f"HostTarget.features must not enable AMX, got {self.features!r}")


def _enabled_features(features: dict[str, bool]) -> set[str]:
    return {name for name, on in features.items() if on}


def vector_shape(features: set[str], machine: str) -> tuple[int, int]:
    """(float lanes, vector registers) for a feature set: the widest vectors the CPU runs."""
    if "avx512f" in features:
        return 16, 32
    if "avx" in features or "avx2" in features:
        return 8, 16
    if machine.lower() in ("aarch64", "arm64") or "neon" in features:
        return 4, 32
    return 4, 16


def feature_string(features: dict[str, bool], lanes: int) -> str:
    """LLVM's `+a,-b` string for the host, AMX forced off.

    With 16 lanes `prefer-256-bit` is turned off: LLVM's tuning for recent Intel cores would
    otherwise split our explicit 512-bit vectors into pairs of 256-bit ones.
    """
    parts = []
    for name, on in sorted(features.items()):
        banned = name.startswith(_BANNED_FEATURE_PREFIXES)
        parts.append(f"{'+' if on and not banned else '-'}{name}")
    if lanes == 16:
        parts.append("-prefer-256-bit")
    return ",".join(parts)


@cache
def host_target(max_lanes: int = 16) -> HostTarget:
    """The host as LLVM sees it (CPU name and features from CPUID / the OS), computed once.

    `max_lanes` below the host's width drops the wider ISA extensions (8: no AVX-512; 4: no
    AVX either), so tests run the 8- and 4-lane code paths of other machines on this one.
    """
    if max_lanes not in (4, 8, 16):
        raise ValueError(f"host_target max_lanes must be one of [4, 8, 16], got {max_lanes!r}")
    _initialize()
    features = {str(k): bool(v) for k, v in llvm.get_host_cpu_features().items()}
    narrower = ("avx512", "avx10") if max_lanes == 8 else ("avx", "fma", "f16c", "vaes", "vpcl")
    if max_lanes < 16:
        features = {k: v and not k.startswith(narrower) for k, v in features.items()}
    lanes, registers = vector_shape(_enabled_features(features), platform.machine())
    return HostTarget(
        triple=llvm.get_process_triple(),
        cpu=llvm.get_host_cpu_name() if lanes == 16 or max_lanes == 16 else "generic",
        features=feature_string(features, lanes),
        lanes=min(lanes, max_lanes),
        vector_registers=registers,
    )


@lru_cache(maxsize=1)
def _initialize() -> None:
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()


def _target_machine(target: HostTarget) -> llvm.TargetMachine:
    """A new target machine: an MCJIT engine takes ownership of (and frees) the one it gets,
    so each compiled module needs its own."""
    return llvm.Target.from_triple(target.triple).create_target_machine(
        cpu=target.cpu, features=target.features, opt=3, jit=True
    )


class CompiledModule:
    """One optimized module in its own MCJIT engine; keeps the engine alive for its addresses."""

    def __init__(self, module: ir.Module, target: HostTarget) -> None:
        _initialize()
        tm = _target_machine(target)
        module.triple = target.triple
        try:
            parsed = llvm.parse_assembly(str(module))
            parsed.verify()
        except RuntimeError as error:
            raise KernelCompileError(f"IR of {module.name!r} is invalid: {error}") from None
        options = llvm.create_pipeline_tuning_options(speed_level=3)
        # Kernels are vectorized and unrolled by hand; LLVM's own passes would only multiply
        # the code (compile time 3-4x) without making the inner loops faster.
        options.loop_unrolling = False
        options.loop_vectorization = False
        options.slp_vectorization = False
        builder = llvm.create_pass_builder(tm, options)
        builder.getModulePassManager().run(parsed, builder)
        self._engine = llvm.create_mcjit_compiler(parsed, tm)
        self._engine.finalize_object()
        self._module = parsed
        self._tm = tm
        self.name = module.name

    def address(self, function: str) -> int:
        """Entry address of a compiled function, for `ctypes.CFUNCTYPE(...)(address)`."""
        address = self._engine.get_function_address(function)
        if not address:
            raise KernelCompileError(f"module {self.name!r} has no function {function!r}")
        return address

    def assembly(self) -> str:
        """The machine code as text: tests check it holds no AMX instruction."""
        return self._tm.emit_assembly(self._module)


_cache: dict[Hashable, CompiledModule] = {}
_cache_lock = threading.Lock()


def get_or_compile(
    key: Hashable, build: Callable[[HostTarget], ir.Module], target: HostTarget | None = None
) -> CompiledModule:
    """The compiled module for (`key`, target), built and compiled on first use in this
    process; `target` defaults to the host."""
    target = target or host_target()
    with _cache_lock:
        compiled = _cache.get((key, target))
        if compiled is None:
            compiled = CompiledModule(build(target), target)
            _cache[key, target] = compiled
        return compiled
