"""The devices a plan may use: this machine's (measured), a built-in profile's ("what if"), or
those of a profile file (`edge devices --save-profile FILE` on another machine).

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
from typing import TYPE_CHECKING

from devices.profiles import (
    PLATFORMS,
    PROFILES,
    DeviceProfile,
    DeviceProfileError,
    read_profile_file,
)
from edge.errors import ConfigError, PackageError
from edge.package import Package
from edge.planner.memory import DEFAULT_FOOTPRINT, ImportFootprint
from edge.planner.plan import Device, Plan, PlanConfig

if TYPE_CHECKING:
    from devices.backend import Backend

# Spellings people use for the built-in platforms.
ALIASES = {
    "rpi4": "pi4",
    "rpi5": "pi5",
    "raspberry-pi-4": "pi4",
    "raspberry-pi-5": "pi5",
    "jetson": "jetson-orin-nano",
    "phone": "snapdragon-8-gen-3",
    "laptop": "laptop-x86",
    "laptop-npu": "core-ultra-7-155h",
    "meteor-lake": "core-ultra-7-155h",
}
# The backend each kind of device runs through, all registered (devices.registry): ONNX Runtime
# on CPUs, its CUDA provider on GPUs (onnxruntime-gpu, as Jetson's JetPack wheels ship it),
# Qualcomm's QNN execution provider on the phone's NPU.
BACKEND_FOR_KIND = {"cpu": "ort_cpu", "gpu": "ort_cuda", "npu": "ort_qnn"}
# Devices their kind's backend does not drive: an Intel iGPU or NPU runs through OpenVINO.
BACKEND_FOR_PROFILE: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "core-ultra-7-155h-gpu": ("openvino", (("device", "GPU"),)),
    "core-ultra-7-155h-npu": ("openvino", (("device", "NPU"),)),
}
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
    "core-ultra-7-155h": 3.0,
}


def _limit(budget: int | str | None, total: int | None = None) -> int | None:
    """Bytes of a budget; a percentage is of `total` (a profile's memory) or of this machine's."""
    from memory_sched.budget import MemoryBudget

    return None if budget is None else MemoryBudget.parse(budget, total=total).limit


def profile_devices(names: Sequence[str], budget: int | str | None = None) -> tuple[Device, ...]:
    """Devices of built-in platforms or profiles ("rpi5", "jetson-orin-nano", "pi4", ...) or
    of profile files (a path); a percentage budget is of each profile's memory."""
    out: list[Device] = []
    for name in names:
        key = ALIASES.get(name, name)
        if key in PLATFORMS:
            profiles: Sequence[DeviceProfile] = [PROFILES[n] for n in PLATFORMS[key]]
        elif key in PROFILES:
            profiles = [PROFILES[key]]
        elif name.endswith(".json") or Path(name).expanduser().is_file():
            profiles = read_profile_file(Path(name).expanduser())
        else:
            known = sorted({*PLATFORMS, *PROFILES, *ALIASES})
            raise DeviceProfileError(
                f"unknown profile {name!r}; known: {', '.join(known)}, or a profile file "
                "(edge devices --save-profile FILE)"
            )
        for p in profiles:
            backend, options = BACKEND_FOR_PROFILE.get(p.name, (BACKEND_FOR_KIND[p.kind], ()))
            out.append(Device(p, backend, _limit(budget, p.memory_bytes), options))
    return tuple(out)


def platform_config(config: PlanConfig, name: str) -> PlanConfig:
    """`config` with the usual storage speed of platform (or profile) `name`, unless it has one
    (streamed plans read weights from it)."""
    key = ALIASES.get(name, name)
    platform = next((p for p, names in PLATFORMS.items() if key == p or key in names), key)
    if config.disk_gbs is None and platform in PLATFORM_DISK_GBS:
        return replace(config, disk_gbs=PLATFORM_DISK_GBS[platform])
    return config


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
    for built-in `profiles` or profile files; `budget` ("600MB", "25%", bytes) caps each
    device's memory."""
    config = config or PlanConfig()
    if not profiles:
        return plan_devices(model, local_devices(budget), config, local=True, progress=progress)
    devices = profile_devices(profiles, budget)
    config = platform_config(config, profiles[0])
    return plan_devices(model, devices, config, local=False, progress=progress)


def plan_devices(
    model: str | os.PathLike[str] | None,
    devices: Sequence[Device],
    config: PlanConfig | None = None,
    *,
    local: bool,
    progress: bool = False,
) -> Plan:
    """Plan `model` on `devices` chosen by the caller (a backend picked per device, as on a
    Jetson whose GPU runs through torch). `local`: the devices are this machine's, so each
    backend is also asked whether it is installed and sees its device."""
    from edge.package import open_package
    from edge.planner.make import make_plan
    from edge.resolve import plannable_package

    config = config or PlanConfig()
    if config.footprint is None:  # the libraries as this environment holds them, measured
        config = replace(config, footprint=import_footprint())
    with plannable_package(model, progress=progress) as (path, laid_out):
        package = open_package(path, verify="sizes")
        try:
            refusals = backend_refusals(package, devices, local=local)
            plan = make_plan(package.manifest, devices, config, refusals)
        finally:
            package.close()
        if local and plan.stored_packing is not None:
            plan = _with_stored_packing(plan, path, laid_out)
    if not laid_out:
        return plan
    note = (
        "planned on the package its export would write (the same parts and sizes), not "
        "exported yet: `edge run` or `edge export` exports it first"
    )
    return replace(plan, notes=(*plan.notes, note))


def _with_stored_packing(plan: Plan, path: Path, laid_out: bool) -> Plan:
    """This machine's answer on stored packings: none where `EDGE_PREPACKED_CACHE=off` (no
    load stores or maps one), else whether one of this package is in the cache."""
    from edge.prepacked import effective

    if effective("build") == "off":
        return replace(plan, stored_packing=None)
    from devices.backends.ort_prepacked import stored_for

    assert plan.stored_packing is not None
    stored = not laid_out and stored_for(path)
    return replace(plan, stored_packing=replace(plan.stored_packing, stored=stored))


def backend_refusals(
    package: Package, backends: Iterable[str | Device], *, local: bool
) -> dict[tuple[str, int], str]:
    """(backend, part index) -> why that backend refuses the part: each backend's own
    ahead-of-time `supports()`, and for this machine (`local`) its `is_available()`, so the
    planner never proposes what the engine would refuse. ONNX Runtime's CPU provider runs
    every part (it is every backend's fallback) and is not asked.

    Given `Device`s, the keys are their labels and each is asked as it configures its backend
    (OpenVINO with `device="NPU"` answers for the NPU, not for its CPU plugin). In a what-if
    plan (not `local`) a device absent here is not held against it: "not available" is no
    answer about a part."""
    from edge.backends import create
    from edge.placement import DEFAULT_BACKEND as DEFAULT

    asked: dict[tuple[str, tuple], list[str]] = {}  # (backend, options) -> keys
    for b in backends:
        name, options, key = (b, (), b) if isinstance(b, str) else (b.backend, b.options, b.label)
        if name != DEFAULT:
            asked.setdefault((name, options), []).append(key)
    n = len(package.manifest.parts)
    out: dict[tuple[str, int], str] = {}
    for (name, options), keys in asked.items():
        try:
            reasons = _refusals(create(name, dict(options)), package, local)
        except ConfigError as exc:
            reasons = dict.fromkeys(range(n), str(exc))
        out.update({(key, i): reason for key in keys for i, reason in reasons.items()})
    return out


def _refusals(backend: Backend, package: Package, local: bool) -> dict[int, str]:
    """Part index -> why `backend` refuses it (see `backend_refusals`)."""
    from devices.backend import Support

    available = backend.is_available() if local else None
    absent: Support | None = None  # what-if: asked only once a part is refused
    out: dict[int, str] = {}
    for i, part in enumerate(package.manifest.parts):
        if available is not None and not available:
            support = available
        else:
            try:
                support = backend.supports(part, package)
            except PackageError as exc:  # a graph this backend's reader cannot take
                support = Support(False, str(exc))
        if support:
            continue
        if not local:
            if absent is None:
                absent = backend.is_available()
            if not absent and support.reason == absent.reason:
                continue
        out[i] = support.reason
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
