"""The devices a plan may use: this machine's (measured), or a built-in profile's ("what if").

Kept apart from the pure planner: discovering this machine runs a cached micro-benchmark and
asks each runtime whether it is installed.

>>> devices = local_devices(budget=600 << 20)  # doctest: +SKIP
>>> plan = plan_model("smollm2-135m", profiles=["rpi5"])  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

from devices.profiles import PLATFORMS, PROFILES, DeviceProfile, DeviceProfileError
from edge.errors import ConfigError, PackageError
from edge.package import Package
from edge.planner.memory import DEFAULT_FOOTPRINT, ImportFootprint
from edge.planner.plan import Device, Plan, PlanConfig

# Spellings people use for the built-in platforms.
ALIASES = {
    "rpi4": "pi4",
    "rpi5": "pi5",
    "raspberry-pi-4": "pi4",
    "raspberry-pi-5": "pi5",
    "jetson": "jetson-orin-nano",
    "phone": "snapdragon-8-gen-3",
    "laptop": "laptop-x86",
}
# The backend each kind of device runs through, all registered (devices.registry): ONNX Runtime
# on CPUs, its CUDA provider on GPUs (onnxruntime-gpu, as Jetson's JetPack wheels ship it),
# Qualcomm's QNN execution provider on the phone's NPU.
BACKEND_FOR_KIND = {"cpu": "ort_cpu", "gpu": "ort_cuda", "npu": "ort_qnn"}
LOCAL_BACKENDS = ("ort_cpu", "openvino")
# Sequential read speed of each platform's usual storage, GB/s, for streamed plans: Pi 4 from a
# USB 3 SSD (~0.35; a microSD card reads ~0.09), Pi 5 from an NVMe HAT on PCIe 2.0 x1 (~0.45),
# Jetson Orin Nano from NVMe on PCIe 3.0 x4 (~1.5 sustained), a phone's UFS 4.0 (~2), a
# laptop's NVMe (~3). Published figures, derated to sustained reads.
PLATFORM_DISK_GBS = {
    "pi4": 0.35,
    "pi5": 0.45,
    "jetson-orin-nano": 1.5,
    "snapdragon-8-gen-3": 2.0,
    "laptop-x86": 3.0,
}


def _limit(budget: int | str | None, total: int | None = None) -> int | None:
    """Bytes of a budget; a percentage is of `total` (a profile's memory) or of this machine's."""
    from memory_sched.budget import MemoryBudget

    return None if budget is None else MemoryBudget.parse(budget, total=total).limit


def profile_devices(names: Sequence[str], budget: int | str | None = None) -> tuple[Device, ...]:
    """Devices of built-in platforms or profiles ("rpi5", "jetson-orin-nano", "pi4", ...);
    a percentage budget is of each profile's memory."""
    out: list[Device] = []
    for name in names:
        key = ALIASES.get(name, name)
        if key in PLATFORMS:
            profiles = [PROFILES[n] for n in PLATFORMS[key]]
        elif key in PROFILES:
            profiles = [PROFILES[key]]
        else:
            known = sorted({*PLATFORMS, *PROFILES, *ALIASES})
            raise DeviceProfileError(f"unknown profile {name!r}; known: {', '.join(known)}")
        out += [
            Device(p, BACKEND_FOR_KIND[p.kind], _limit(budget, p.memory_bytes)) for p in profiles
        ]
    return tuple(out)


def local_devices(budget: int | str | None = None, *, refresh: bool = False) -> tuple[Device, ...]:
    """This machine's CPU (measured profile) through every CPU runtime that is installed."""
    from devices import registry
    from devices.microbench import measured_profile

    profile: DeviceProfile = measured_profile(refresh=refresh)
    devices = []
    for name in LOCAL_BACKENDS:
        if name == "ort_cpu" or registry.create(name).is_available():
            devices.append(Device(profile, name, _limit(budget)))
    return tuple(devices)


def plan_model(
    model: str | os.PathLike[str] | None = None,
    *,
    budget: int | str | None = None,
    profiles: Sequence[str] = (),
    config: PlanConfig | None = None,
    progress: bool = False,
) -> Plan:
    """Plan `model` (a name, GGUF, folder or package, as `edge.load` takes) for this machine or
    for built-in `profiles`; `budget` ("600MB", "25%", bytes) caps each device's memory."""
    from edge.package import open_package
    from edge.planner.make import make_plan
    from edge.resolve import resolve_package

    config = config or PlanConfig()
    devices = profile_devices(profiles, budget) if profiles else local_devices(budget)
    if profiles and config.disk_gbs is None:
        platform = ALIASES.get(profiles[0], profiles[0])
        platform = next(
            (p for p, names in PLATFORMS.items() if platform == p or platform in names), platform
        )
        if platform in PLATFORM_DISK_GBS:
            config = replace(config, disk_gbs=PLATFORM_DISK_GBS[platform])
    if config.footprint is None:  # the libraries as this environment holds them, measured
        config = replace(config, footprint=import_footprint())
    package = open_package(resolve_package(model, progress=progress), verify="sizes")
    try:
        refusals = backend_refusals(package, {d.backend for d in devices}, local=not profiles)
        return make_plan(package.manifest, devices, config, refusals)
    finally:
        package.close()


def backend_refusals(
    package: Package, backends: Iterable[str], *, local: bool
) -> dict[tuple[str, int], str]:
    """(backend, part index) -> why that backend refuses the part: each backend's own
    ahead-of-time `supports()`, and for this machine (`local`) its `is_available()`, so the
    planner never proposes what the engine would refuse. ONNX Runtime's CPU provider runs
    every part (it is every backend's fallback) and is not asked."""
    from devices.backend import Support
    from edge.backends import create
    from edge.placement import DEFAULT_BACKEND as DEFAULT

    parts = package.manifest.parts
    out: dict[tuple[str, int], str] = {}
    for name in sorted(set(backends) - {DEFAULT}):
        try:
            backend = create(name)
        except ConfigError as exc:
            out.update({(name, i): str(exc) for i in range(len(parts))})
            continue
        available = backend.is_available() if local else None
        for i, part in enumerate(parts):
            try:
                support = (
                    available
                    if available is not None and not available
                    else backend.supports(part, package)
                )
            except PackageError as exc:  # a graph this backend's reader cannot take
                support = Support(False, str(exc))
            if not support:
                out[(name, i)] = support.reason
    return out


# Run isolated (`-I`) from a scratch folder: `python -c` would otherwise put the working
# directory first on sys.path, so a `json.py` there would run. The folder edge was imported
# from (argv[1]) goes last on the path, after the standard library and site-packages.
_FOOTPRINT_SCRIPT = r"""
import json, sys
sys.path.append(sys.argv[1])
def rss():
    return 1024 * int(next(l.split()[1] for l in open("/proc/self/status")
                           if l.startswith("VmRSS:")))
import numpy, edge
base = rss()
import onnxruntime
ort = rss()
import edge.streaming.backend
llvm = rss()
from devices.kernels.nbits_matmul import NBitsMatMul, NBitsSpec
NBitsMatMul(NBitsSpec(256, 64), threads=1)
print(json.dumps([base, ort - base, llvm - ort, rss() - llvm]))
"""


@functools.cache
def import_footprint() -> ImportFootprint:
    """Measured once per process (about a second); the constants above where it cannot run."""
    import edge

    root = str(Path(edge.__file__).resolve().parent.parent)
    try:
        with tempfile.TemporaryDirectory(prefix="edge-probe-") as scratch:
            out = subprocess.run(
                [sys.executable, "-I", "-c", _FOOTPRINT_SCRIPT, root],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
                cwd=scratch,
            )
        return ImportFootprint(*json.loads(out.stdout.strip().splitlines()[-1]))
    except (OSError, ValueError, TypeError, IndexError, subprocess.SubprocessError):
        return DEFAULT_FOOTPRINT
