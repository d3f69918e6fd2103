"""GPUs: NVIDIA cards through nvidia-smi, Jetson's integrated GPU, and torch's view when asked.

nvidia-smi needs no Python package and answers in ~100 ms, so it is the primary probe; torch is
only imported when the caller asks (`probe_torch=True`), because importing it costs seconds. A
Jetson's GPU shares system RAM, so its memory is the board's RAM and `unified_memory` is set.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from dataclasses import dataclass

MIB = 1 << 20
NVIDIA_SMI_QUERY = "index,name,memory.total,memory.free,driver_version"
VENDORS = ("nvidia", "apple", "intel", "amd", "qualcomm")


@dataclass(frozen=True)
class Gpu:
    """One GPU as a probe saw it; memory is None where the probe cannot tell (Jetson's smi)."""

    index: int
    name: str
    vendor: str
    memory_total: int | None
    memory_free: int | None = None
    unified_memory: bool = False
    source: str = "nvidia-smi"
    driver: str | None = None
    usable_via: tuple[str, ...] = ()  # installed runtimes that can run on it, filled by discovery

    def __post_init__(self) -> None:
        if self.vendor not in VENDORS:
            raise ValueError(f"Gpu.vendor must be one of {VENDORS}, got {self.vendor!r}")
        if self.memory_total is not None and self.memory_total <= 0:
            raise ValueError(f"Gpu.memory_total must be > 0 bytes or None, got {self.memory_total}")


@dataclass(frozen=True)
class TorchInfo:
    """What an explicitly requested torch probe found."""

    version: str
    cuda_available: bool
    cuda_devices: tuple[Gpu, ...]
    mps_available: bool


def _mib(field: str) -> int | None:
    field = field.strip()
    return int(float(field) * MIB) if field.replace(".", "", 1).isdigit() else None


def parse_nvidia_smi(text: str) -> tuple[Gpu, ...]:
    """Parse `nvidia-smi --query-gpu=NVIDIA_SMI_QUERY --format=csv,noheader,nounits` output.

    Fields reading "[N/A]" (Jetson, some MIG setups) become None.
    """
    gpus = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) != 5 or not fields[0].isdigit():
            continue
        index, name, total, free, driver = fields
        gpus.append(
            Gpu(
                int(index),
                name,
                "nvidia",
                _mib(total),
                _mib(free),
                source="nvidia-smi",
                driver=None if "N/A" in driver else driver,
            )
        )
    return tuple(gpus)


def query_nvidia_smi(timeout_s: float = 10.0) -> str | None:
    """nvidia-smi's CSV answer, or None when it is not on PATH or fails (no driver loaded)."""
    exe = shutil.which("nvidia-smi")
    # A relative hit comes from a "." or empty entry in PATH: the working directory, which may
    # hold anyone's files; only an installed nvidia-smi is run.
    if exe is None or not os.path.isabs(exe):
        return None
    command = [exe, f"--query-gpu={NVIDIA_SMI_QUERY}", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def nvidia_gpus() -> tuple[Gpu, ...]:
    """Discrete NVIDIA GPUs nvidia-smi lists (empty without nvidia-smi or a driver)."""
    text = query_nvidia_smi()
    return parse_nvidia_smi(text) if text else ()


def jetson_gpu(model: str, ram_total: int, ram_available: int) -> Gpu:
    """The integrated GPU of a Jetson: no memory of its own, it shares the board's RAM."""
    return Gpu(
        0,
        f"{model} integrated GPU",
        "nvidia",
        ram_total,
        ram_available,
        unified_memory=True,
        source="jetson device tree",
    )


def probe_torch() -> TorchInfo | None:
    """Ask torch about CUDA and MPS devices (imports torch: seconds). None if not installed."""
    if importlib.util.find_spec("torch") is None:
        return None
    import torch

    cuda = bool(torch.cuda.is_available())
    vendor = "amd" if getattr(torch.version, "hip", None) else "nvidia"  # ROCm builds reuse .cuda
    devices = []
    for index in range(torch.cuda.device_count() if cuda else 0):
        props = torch.cuda.get_device_properties(index)
        free, _total = torch.cuda.mem_get_info(index)
        devices.append(
            Gpu(index, props.name, vendor, int(props.total_memory), int(free), source="torch.cuda")
        )
    mps_backend = getattr(torch.backends, "mps", None)
    mps = bool(mps_backend is not None and mps_backend.is_available())
    return TorchInfo(torch.__version__, cuda, tuple(devices), mps)
