"""Device profiles: what the planner needs to know of a device to predict latency and memory.

A profile states *effective* numbers (what real kernels reach), not datasheet peaks, and says
where each number came from in `source`: "measured on this machine, <date>" (microbench.py) or
"published spec: <what>". Built-in profiles let `edge plan` reason about a Pi, a Jetson or a
phone from a laptop. Devices that share one DRAM (CPU + GPU on a Jetson, CPU + GPU + NPU on a
phone) name the same `memory_pool`, so the planner does not count that memory twice.

A profile file (`edge devices --save-profile FILE` writes this machine's measured one) lets a
user share their device: `edge plan --profile FILE` plans for it anywhere.

>>> profile_by_name("pi5").memory_bandwidth_gbs
10.0
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError

KINDS = ("cpu", "gpu", "npu")
# The fraction of the profile's effective compute a batch-1 LLM kernel of each kind reaches:
# CPUs run ORT's MLAS kernels close to their GEMM rate; small-batch GPU work loses to launch
# overhead and low occupancy; NPUs lose more to graph partitioning and layout conversions.
DEFAULT_EFFICIENCY = {"cpu": 0.8, "gpu": 0.6, "npu": 0.5}
SOURCE_PREFIXES = ("measured on this machine, ", "published spec: ")
GB = 10**9
FILE_VERSION = 1  # the "edge_device_profiles" key of a profile file


class DeviceProfileError(EdgeError, ValueError):
    """A device profile value out of range, or a profile name that does not exist."""


@dataclass(frozen=True)
class DeviceProfile:
    """One compute device as the planner sees it. Bandwidths in GB/s (10^9 bytes/s).

    memory_bytes: what a model may occupy (after the OS and other apps), not the chip's size.
    fp32_gflops / int8_gops: effective dense rates; 0 means the device cannot compute in that
        type (NPUs without fp32).
    host_link_gbs: for a GPU/NPU with its own memory, the copy bandwidth to the host (PCIe);
        None when it shares the host's memory (unified, zero-copy) and always for CPUs.
    memory_pool: devices naming the same pool share `memory_bytes`; defaults to `name`.
    """

    name: str
    kind: str
    memory_bytes: int
    memory_bandwidth_gbs: float
    fp32_gflops: float
    int8_gops: float
    cores: int
    source: str
    efficiency: float | None = None
    needs_static_shapes: bool = False
    needs_int8: bool = False
    host_link_gbs: float | None = None
    memory_pool: str | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise DeviceProfileError("DeviceProfile.name must be a non-empty string")
        if self.kind not in KINDS:
            raise DeviceProfileError(f"{self.name}: kind must be one of {KINDS}, got {self.kind!r}")
        self._check_positive("memory_bytes", "memory_bandwidth_gbs", "int8_gops", "cores")
        if self.fp32_gflops < 0 or (self.fp32_gflops == 0 and not self.needs_int8):
            raise DeviceProfileError(
                f"{self.name}: fp32_gflops must be > 0 (0 only with "
                f"needs_int8), got {self.fp32_gflops}"
            )
        if not self.source.startswith(SOURCE_PREFIXES):
            raise DeviceProfileError(
                f"{self.name}: source must start with one of {SOURCE_PREFIXES}, got {self.source!r}"
            )
        if self.kind == "cpu" and self.host_link_gbs is not None:
            raise DeviceProfileError(
                f"{self.name}: a cpu has no host link, got host_link_gbs={self.host_link_gbs}"
            )
        if self.host_link_gbs is not None and self.host_link_gbs <= 0:
            raise DeviceProfileError(
                f"{self.name}: host_link_gbs must be > 0 or None, got {self.host_link_gbs}"
            )
        if self.efficiency is None:
            object.__setattr__(self, "efficiency", DEFAULT_EFFICIENCY[self.kind])
        if not 0 < self.efficiency <= 1:  # type: ignore[operator]
            raise DeviceProfileError(
                f"{self.name}: efficiency must be in (0, 1], got {self.efficiency}"
            )
        if self.memory_pool is None:
            object.__setattr__(self, "memory_pool", self.name)

    def _check_positive(self, *fields: str) -> None:
        for field in fields:
            value = getattr(self, field)
            if not value > 0:
                raise DeviceProfileError(f"{self.name}: {field} must be > 0, got {value}")

    @property
    def unified_memory(self) -> bool:
        """True for an accelerator that reads the host's DRAM directly (Jetson, phone, iGPU)."""
        return self.kind != "cpu" and self.host_link_gbs is None


# --- Built-in profiles. Every number is effective (sustained), below the datasheet peak. ------

BUILTIN: tuple[DeviceProfile, ...] = (
    # Raspberry Pi 4 Model B 4 GB: 4x Cortex-A72 @ 1.8 GHz (BCM2711, Raspberry Pi product brief),
    # LPDDR4-3200 on a 32-bit bus = 12.8 GB/s peak; STREAM-style read tests on the Pi 4 report
    # 4-6 GB/s, we take 4.5. A72 NEON peak 16 fp32 FLOP/cycle/core = 115 GFLOP/s; HPL reaches
    # ~12 GFLOP/s fp64, so ~25 GFLOP/s fp32 GEMM. No dotprod: int8 runs through widening
    # multiplies at ~1.6x fp32. ~0.7 GB left to the OS.
    DeviceProfile(
        "pi4",
        "cpu",
        int(3.3 * GB),
        4.5,
        25.0,
        40.0,
        4,
        "published spec: Raspberry Pi 4 product brief (4x A72 1.8 GHz, LPDDR4-3200); "
        "bandwidth and GFLOP/s from public STREAM/HPL results, derated",
    ),
    # Raspberry Pi 5 8 GB: 4x Cortex-A76 @ 2.4 GHz (BCM2712, Raspberry Pi 5 product brief),
    # LPDDR4X-4267 32-bit = 17 GB/s peak; measured reads land at 10-17 GB/s, we take 10.
    # A76 peak 16 fp32 FLOP/cycle/core = 154 GFLOP/s; HPL ~30 GFLOP/s fp64 -> ~50 fp32 GEMM.
    # A76 has SDOT (dotprod): int8 GEMM ~3x fp32, so 150 GOP/s. ~1 GB left to the OS.
    DeviceProfile(
        "pi5",
        "cpu",
        7 * GB,
        10.0,
        50.0,
        150.0,
        4,
        "published spec: Raspberry Pi 5 product brief (4x A76 2.4 GHz, LPDDR4X-4267); "
        "bandwidth and GFLOP/s from public STREAM/HPL results, derated",
    ),
    # Jetson Orin Nano 8 GB (NVIDIA Jetson Orin Nano series data sheet): 6x Cortex-A78AE @ 1.5
    # GHz, 1024-core Ampere GPU with 32 tensor cores @ 625 MHz (1.28 TFLOP/s fp32 peak), 20 TOPS
    # int8 sparse = 10 dense, 128-bit LPDDR5 at 68 GB/s shared by CPU and GPU. We take 50 GB/s
    # for the GPU, 20 GB/s for the CPU cluster (an assumption: no published CPU-only figure; an
    # A78 cluster does not saturate the memory controller), 60% of the GPU's peaks, and ~6 GB
    # left after JetPack.
    DeviceProfile(
        "jetson-orin-nano-cpu",
        "cpu",
        6 * GB,
        20.0,
        50.0,
        150.0,
        6,
        "published spec: NVIDIA Jetson Orin Nano 8GB data sheet (6x A78AE 1.5 GHz); "
        "CPU bandwidth assumed",
        memory_pool="jetson-orin-nano",
    ),
    DeviceProfile(
        "jetson-orin-nano-gpu",
        "gpu",
        6 * GB,
        50.0,
        770.0,
        6000.0,
        8,
        "published spec: NVIDIA Jetson Orin Nano 8GB data sheet (1024 CUDA cores, "
        "10 dense int8 TOPS, 68 GB/s LPDDR5), derated to 60-75%",
        memory_pool="jetson-orin-nano",
    ),
    # Snapdragon 8 Gen 3-class phone (Qualcomm product brief: 1x Cortex-X4 3.3 GHz + 5x A720 +
    # 2x A520, Adreno 750, Hexagon NPU, LPDDR5X-4800 64-bit = 77 GB/s), 12 GB of which Android
    # lets one app keep ~5 GB. CPU reads ~40 GB/s (llama.cpp decode rates on such phones imply
    # 35-45), 150 GFLOP/s fp32 and 400 GOP/s int8 (i8mm) on the big cores. Adreno 750: ~4.6
    # TFLOP/s fp32 peak, we take 2000. Qualcomm publishes no Hexagon TOPS for this chip; press
    # estimates are ~34-45 TOPS int8 peak and we take 10 TOPS, fp16/int8 only and static shapes
    # (QNN HTP compiles a fixed graph).
    DeviceProfile(
        "snapdragon-8-gen-3-cpu",
        "cpu",
        5 * GB,
        40.0,
        150.0,
        400.0,
        8,
        "published spec: Qualcomm Snapdragon 8 Gen 3 product brief (X4 + 5x A720 + "
        "2x A520, LPDDR5X 77 GB/s); effective rates derated",
        memory_pool="snapdragon-8-gen-3",
    ),
    # Adreno's shader-processor count is unpublished: cores=1 (the planner does not split work
    # inside one GPU anyway). Jetson's 8 is its SM count (1024 CUDA cores / 128 per SM).
    DeviceProfile(
        "snapdragon-8-gen-3-gpu",
        "gpu",
        5 * GB,
        45.0,
        2000.0,
        4000.0,
        1,
        "published spec: Qualcomm Snapdragon 8 Gen 3 product brief (Adreno 750, ~4.6 "
        "TFLOP/s fp32), derated",
        memory_pool="snapdragon-8-gen-3",
    ),
    DeviceProfile(
        "snapdragon-8-gen-3-npu",
        "npu",
        5 * GB,
        45.0,
        0.0,
        10000.0,
        1,
        "published spec: Snapdragon 8 Gen 3 Hexagon NPU (no official TOPS; ~34-45 "
        "int8 TOPS estimated), derated to ~25%",
        needs_static_shapes=True,
        needs_int8=True,
        memory_pool="snapdragon-8-gen-3",
    ),
    # A mainstream laptop: 8-core x86 with AVX2 (+ AVX-VNNI on Alder Lake and later), 16 GB
    # dual-channel DDR5-5600 = 89.6 GB/s peak, ~60 GB/s sustained reads. AVX2 peak is 32 fp32
    # FLOP/cycle/core (2 FMA ports): ~770 GFLOP/s at 3 GHz; all-core clocks under load and MLAS
    # efficiency leave ~300. VNNI int8 ~2.5x. ~10 GB free beside the OS and a browser; no GPU.
    DeviceProfile(
        "laptop-x86",
        "cpu",
        10 * GB,
        60.0,
        300.0,
        800.0,
        8,
        "published spec: DDR5-5600 dual channel (89.6 GB/s peak), 8-core AVX2 CPU at "
        "~3 GHz; effective rates derated",
    ),
    # An Intel laptop with an NPU: Core Ultra 7 155H (Meteor Lake; Intel ARK: 6 P + 8 E + 2 LP-E
    # cores, Arc GPU with 8 Xe-cores at 2.25 GHz, Intel AI Boost NPU; peak int8 TOPS: NPU 11,
    # GPU 18; LPDDR5X-7467 on 128 bits = 119.5 GB/s peak), 16 GB of which ~10 GB are free
    # beside the OS, shared by all three. Sustained reads are an assumption (no published
    # figure): 55 GB/s for the CPU cores, 65 for the GPU, 45 for the NPU. CPU: AVX2 + AVX-VNNI,
    # ~1.1 TFLOP/s fp32 peak over all cores, ~350 under a laptop's power limit; int8 ~2.5x.
    # GPU: 1024 fp32 lanes x 2 x 2.25 GHz = 4.6 TFLOP/s peak, we take 2000 and 8000 int8
    # (~45%). NPU: int8 (and fp16) only, compiled for static shapes; 5000 of its 11 TOPS.
    DeviceProfile(
        "core-ultra-7-155h-cpu",
        "cpu",
        10 * GB,
        55.0,
        350.0,
        900.0,
        16,
        "published spec: Intel ARK, Core Ultra 7 155H (6P + 8E + 2LP-E cores, AVX-VNNI, "
        "LPDDR5X-7467 119.5 GB/s); effective rates derated, bandwidth assumed",
        memory_pool="core-ultra-7-155h",
    ),
    DeviceProfile(
        "core-ultra-7-155h-gpu",
        "gpu",
        10 * GB,
        65.0,
        2000.0,
        8000.0,
        8,
        "published spec: Intel ARK, Core Ultra 7 155H (Intel Arc, 8 Xe-cores at 2.25 GHz, "
        "18 int8 TOPS peak), derated to ~45%",
        memory_pool="core-ultra-7-155h",
    ),
    DeviceProfile(
        "core-ultra-7-155h-npu",
        "npu",
        10 * GB,
        45.0,
        0.0,
        5000.0,
        2,
        "published spec: Intel ARK, Core Ultra 7 155H (Intel AI Boost NPU, 11 int8 TOPS "
        "peak), derated to ~45%; bandwidth assumed",
        needs_static_shapes=True,
        needs_int8=True,
        memory_pool="core-ultra-7-155h",
    ),
)

PROFILES: dict[str, DeviceProfile] = {p.name: p for p in BUILTIN}
# A platform is the set of devices one machine offers to the planner.
PLATFORMS: dict[str, tuple[str, ...]] = {
    "pi4": ("pi4",),
    "pi5": ("pi5",),
    "jetson-orin-nano": ("jetson-orin-nano-cpu", "jetson-orin-nano-gpu"),
    "snapdragon-8-gen-3": (
        "snapdragon-8-gen-3-cpu",
        "snapdragon-8-gen-3-gpu",
        "snapdragon-8-gen-3-npu",
    ),
    "laptop-x86": ("laptop-x86",),
    "core-ultra-7-155h": (
        "core-ultra-7-155h-cpu",
        "core-ultra-7-155h-gpu",
        "core-ultra-7-155h-npu",
    ),
}


def profile_by_name(name: str) -> DeviceProfile:
    """The built-in profile called `name` ("pi5", "jetson-orin-nano-gpu", ...)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise DeviceProfileError(
            f"unknown device profile {name!r}; known profiles: {', '.join(sorted(PROFILES))}"
        ) from None


def platform_by_name(name: str) -> tuple[DeviceProfile, ...]:
    """All devices of a built-in platform ("jetson-orin-nano" -> its CPU and GPU profiles)."""
    if name not in PLATFORMS:
        raise DeviceProfileError(
            f"unknown platform {name!r}; known platforms: {', '.join(sorted(PLATFORMS))}"
        )
    return tuple(PROFILES[n] for n in PLATFORMS[name])


def profiles_json(profiles: Sequence[DeviceProfile]) -> str:
    """A profile file's text: every field of each profile, so a reader needs nothing else."""
    entries = [dataclasses.asdict(p) for p in profiles]
    return json.dumps({"edge_device_profiles": FILE_VERSION, "profiles": entries}, indent=2)


def read_profile_file(path: str | os.PathLike[str]) -> tuple[DeviceProfile, ...]:
    """The profiles of a file `profiles_json` wrote, each checked like a built-in one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise DeviceProfileError(f"cannot read the profile file {path}: {exc!s:.300}") from exc
    if not isinstance(data, dict):
        data = {}
    entries = data.get("profiles")
    if data.get("edge_device_profiles") != FILE_VERSION or not isinstance(entries, list):
        raise DeviceProfileError(
            f"{path} is not an edge device profile file (version {FILE_VERSION}; "
            "`edge devices --save-profile FILE` writes one)"
        )
    fields = {f.name for f in dataclasses.fields(DeviceProfile)}
    profiles = []
    for entry in entries:
        unknown = sorted(set(entry) - fields) if isinstance(entry, dict) else ["(not an object)"]
        if unknown:
            raise DeviceProfileError(f"{path}: unknown profile fields {unknown}")
        try:
            profiles.append(DeviceProfile(**entry))
        except TypeError as exc:  # a missing field, or a value of the wrong type
            raise DeviceProfileError(f"{path}: {exc}") from None
    names = [p.name for p in profiles]
    if not names or len(set(names)) != len(names):
        raise DeviceProfileError(f"{path}: needs profiles with distinct names, got {names}")
    return tuple(profiles)
