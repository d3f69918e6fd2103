"""What the CPU is and which instructions it has, read from /proc/cpuinfo and cross-checked by LLVM.

The kernels edge picks depend on the ISA (AVX-512 VNNI or AMX on x86, dotprod/i8mm on ARM), so
the features are normalised to one vocabulary here. /proc/cpuinfo says what the kernel lets a
process use; LLVM reads CPUID (or the ARM equivalent) directly. A disagreement (a VM that hides
AMX, say) is reported rather than resolved silently.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from devices.cgroups import cpu_quota

# /proc/cpuinfo flag -> edge's name for it. x86 "flags" and ARM "Features" share one table: the
# names do not collide.
CPUINFO_FEATURES = {
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512_vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "avx512_bf16": "avx512_bf16",
    "avx512_fp16": "avx512_fp16",
    "amx_tile": "amx_tile",
    "amx_int8": "amx_int8",
    "amx_bf16": "amx_bf16",
    "asimd": "neon",  # aarch64 spells NEON "asimd"
    "neon": "neon",  # 32-bit ARM kernels say "neon"
    "asimddp": "dotprod",
    "asimdhp": "fp16",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
}

# LLVM's feature name -> edge's name (llvm.get_host_cpu_features()).
LLVM_FEATURES = {
    "avx2": "avx2",
    "fma": "fma",
    "f16c": "f16c",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512vnni": "avx512_vnni",
    "avxvnni": "avx_vnni",
    "avx512bf16": "avx512_bf16",
    "avx512fp16": "avx512_fp16",
    "amx-tile": "amx_tile",
    "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
    "neon": "neon",
    "dotprod": "dotprod",
    "fullfp16": "fp16",
    "i8mm": "i8mm",
    "bf16": "bf16",
    "sve": "sve",
    "sve2": "sve2",
}

# Fields that name the CPU, in order of preference (x86, then the ARM kernels' variants).
MODEL_FIELDS = ("model name", "Model", "Hardware", "Processor", "cpu model")


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU: name, core counts, the ISA features edge's kernels care about.

    `usable_cores` is what this process may run on (affinity mask and cgroup CPU quota), which
    in a container is less than `logical_cores`.
    """

    model: str
    arch: str
    physical_cores: int
    logical_cores: int
    usable_cores: int
    features: tuple[str, ...]
    llvm_cpu: str | None = None
    llvm_features: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        for field in ("physical_cores", "logical_cores", "usable_cores"):
            if getattr(self, field) < 1:
                raise ValueError(f"CpuInfo.{field} must be >= 1, got {getattr(self, field)}")

    def has(self, feature: str) -> bool:
        """True when /proc/cpuinfo (or LLVM where there is no /proc) lists `feature`."""
        return feature in self.features

    @property
    def disagreements(self) -> tuple[str, ...]:
        """Features one of /proc/cpuinfo and LLVM reports and the other does not."""
        if self.llvm_features is None:
            return ()
        return tuple(sorted(set(self.features) ^ set(self.llvm_features)))


def parse_cpuinfo(text: str) -> list[dict[str, str]]:
    """Split /proc/cpuinfo into one dict per blank-line-separated block."""
    blocks: list[dict[str, str]] = [{}]
    for line in text.splitlines():
        if not line.strip():
            if blocks[-1]:
                blocks.append({})
            continue
        key, _, value = line.partition(":")
        blocks[-1][key.strip()] = value.strip()
    return [b for b in blocks if b]


def normalise(names: Iterable[str], table: dict[str, str]) -> tuple[str, ...]:
    """Map raw feature names through `table`, dropping the ones edge does not use."""
    return tuple(sorted({table[n] for n in names if n in table}))


def llvm_host() -> tuple[str, tuple[str, ...]] | None:
    """LLVM's host CPU name and features, or None when llvmlite cannot tell."""
    try:
        import llvmlite.binding as llvm

        name = llvm.get_host_cpu_name()
        raw = llvm.get_host_cpu_features()
    except (ImportError, RuntimeError):
        return None
    enabled = [k for k, on in raw.items() if on]
    return name, normalise(enabled, LLVM_FEATURES)


def usable_cores(root: Path, logical: int) -> int:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota if any."""
    count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else logical
    quota = cpu_quota(root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, min(count, logical))


def _core_counts(blocks: list[dict[str, str]]) -> tuple[int, int]:
    """(physical, logical) from cpuinfo blocks; ARM kernels omit core ids (no SMT there)."""
    processors = [b for b in blocks if "processor" in b]
    logical = max(1, len(processors))
    ids = {(b.get("physical id"), b["core id"]) for b in processors if "core id" in b}
    return (len(ids) if ids else logical), logical


def _model(blocks: list[dict[str, str]]) -> str:
    for field in MODEL_FIELDS:
        for block in blocks:
            if block.get(field):
                return block[field]
    return platform.processor() or platform.machine() or "unknown CPU"


def read_cpu(root: Path = Path("/"), *, host: bool = True) -> CpuInfo:
    """Describe the CPU from `root`/proc/cpuinfo.

    `host=False` (a faked root in tests) skips the probes that read the real machine (psutil,
    LLVM, the affinity mask), so the result comes from the files alone.
    """
    path = root / "proc/cpuinfo"
    blocks = parse_cpuinfo(path.read_text(errors="replace")) if path.is_file() else []
    physical, logical = _core_counts(blocks)
    flags = " ".join(b.get("flags", "") + " " + b.get("Features", "") for b in blocks[:1])
    features = normalise(flags.split(), CPUINFO_FEATURES)
    llvm = llvm_host() if host else None
    if host:
        import psutil

        logical = psutil.cpu_count(logical=True) or logical
        physical = psutil.cpu_count(logical=False) or physical
        if not blocks and llvm is not None:  # macOS, Windows: no /proc, LLVM is the source
            features = llvm[1]
    return CpuInfo(
        model=_model(blocks),
        arch=platform.machine() if host else _arch_from(features),
        physical_cores=physical,
        logical_cores=logical,
        usable_cores=usable_cores(root, logical) if host else logical,
        features=features,
        llvm_cpu=llvm[0] if llvm else None,
        llvm_features=llvm[1] if llvm else None,
    )


def _arch_from(features: tuple[str, ...]) -> str:
    """A faked root has no uname: guess the architecture family from its features."""
    if "neon" in features:
        return "aarch64"
    return "x86_64" if any(f.startswith(("avx", "fma", "f16c")) for f in features) else "unknown"
