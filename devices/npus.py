"""NPUs and the runtimes that reach accelerators: ONNX Runtime's providers and OpenVINO's devices.

Two separate questions are answered here and must not be confused: which *hardware* the machine
has (device files, device tree, OS) and which *runtimes* are installed (an onnxruntime-qnn wheel
lists QNNExecutionProvider on a PC with no Hexagon). An `Npu` (or a `Gpu`) is hardware that was
seen, with the installed runtimes that can drive it; none means "install something" (hints.py).
"""

from __future__ import annotations

import importlib.util
import platform
from dataclasses import dataclass
from pathlib import Path

from devices.gpus import Gpu

# ONNX Runtime providers that drive an accelerator, and what each targets.
ACCELERATOR_PROVIDERS = {
    "CUDAExecutionProvider": "NVIDIA GPU",
    "TensorrtExecutionProvider": "NVIDIA GPU (TensorRT)",
    "QNNExecutionProvider": "Qualcomm Hexagon NPU / Adreno GPU",
    "OpenVINOExecutionProvider": "Intel CPU / GPU / NPU through OpenVINO",
    "CoreMLExecutionProvider": "Apple Neural Engine / GPU",
    "NNAPIExecutionProvider": "Android NNAPI (NPU, DSP or GPU)",
    "DmlExecutionProvider": "any DirectX 12 GPU (Windows)",
    "ROCMExecutionProvider": "AMD GPU",
    "MIGraphXExecutionProvider": "AMD GPU",
}
INTEL_PCI_VENDOR = "0x8086"


@dataclass(frozen=True)
class OrtInfo:
    """The installed onnxruntime: its version and the execution providers it was built with."""

    version: str
    providers: tuple[str, ...]


@dataclass(frozen=True)
class OpenVinoDevice:
    name: str  # "CPU", "GPU.0", "NPU"
    full_name: str  # "Intel(R) AI Boost"


@dataclass(frozen=True)
class OpenVinoInfo:
    """OpenVINO's own runtime and the devices its plugins found (None in Machine: not installed)."""

    version: str
    devices: tuple[OpenVinoDevice, ...]

    def has(self, prefix: str) -> bool:
        """True when a device named `prefix` or `prefix.N` exists ("GPU" matches "GPU.0")."""
        return any(d.name.split(".")[0] == prefix for d in self.devices)


@dataclass(frozen=True)
class Npu:
    """NPU hardware that was seen, and the installed runtimes able to use it (may be none)."""

    name: str
    vendor: str
    evidence: str
    usable_via: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.name or not self.evidence:
            raise ValueError(f"Npu needs a name and the evidence it was seen by, got {self!r}")


def read_onnxruntime() -> OrtInfo:
    """onnxruntime is a hard dependency of edge's runtime, so it is imported directly."""
    import onnxruntime

    return OrtInfo(onnxruntime.__version__, tuple(onnxruntime.get_available_providers()))


def read_openvino() -> OpenVinoInfo | None:
    """OpenVINO's devices with their full names, or None when `openvino` is not installed."""
    if importlib.util.find_spec("openvino") is None:
        return None
    import openvino

    core = openvino.Core()
    devices = []
    for name in core.available_devices:
        try:
            full = str(core.get_property(name, "FULL_DEVICE_NAME"))
        except RuntimeError:  # a plugin that lists a device but cannot describe it
            full = name
        devices.append(OpenVinoDevice(name, full))
    return OpenVinoInfo(openvino.__version__, tuple(devices))


def _pci_vendor(device_dir: Path) -> str | None:
    try:
        return (device_dir / "device/vendor").read_text().strip().lower()
    except OSError:
        return None


def _is_intel_accel(root: Path, node: Path, cpu_model: str) -> bool:
    """An accel node is Intel's NPU if its PCI vendor says so; without /sys, if the CPU is Intel."""
    vendor = _pci_vendor(root / "sys/class/accel" / node.name)
    return vendor == INTEL_PCI_VENDOR if vendor is not None else "intel" in cpu_model.lower()


def intel_npu(
    root: Path, cpu_model: str, openvino: OpenVinoInfo | None, providers: tuple[str, ...]
) -> Npu | None:
    """Intel's NPU (Meteor Lake and later): /dev/accel/accel* of the intel_vpu driver, or the
    "NPU" device of OpenVINO."""
    nodes = sorted((root / "dev/accel").glob("accel*"))
    intel_node = any(_is_intel_accel(root, n, cpu_model) for n in nodes)
    ov_npu = openvino is not None and openvino.has("NPU")
    if not (intel_node or ov_npu):
        return None
    via = ("openvino:NPU",) if ov_npu else ()
    if ov_npu and "OpenVINOExecutionProvider" in providers:
        via += ("onnxruntime:OpenVINOExecutionProvider",)
    return Npu("Intel NPU", "intel", "/dev/accel" if intel_node else "openvino NPU device", via)


def intel_gpus(
    root: Path, openvino: OpenVinoInfo | None, providers: tuple[str, ...]
) -> tuple[Gpu, ...]:
    """Intel integrated or Arc GPUs: DRM render nodes whose PCI vendor is Intel's.

    Their memory is not reported: an iGPU shares system RAM and an Arc card's is not in sysfs.
    """
    nodes = [
        n
        for n in sorted((root / "sys/class/drm").glob("renderD*"))
        if _pci_vendor(n) == INTEL_PCI_VENDOR
    ]
    via = ("openvino:GPU",) if openvino is not None and openvino.has("GPU") else ()
    if via and "OpenVINOExecutionProvider" in providers:
        via += ("onnxruntime:OpenVINOExecutionProvider",)
    return tuple(
        Gpu(
            i,
            f"Intel GPU ({n.name})",
            "intel",
            None,
            source=f"/sys/class/drm/{n.name}",
            usable_via=via,
        )
        for i, n in enumerate(nodes)
    )


def hexagon_npu(
    root: Path, board_family: str | None, cpu_model: str, providers: tuple[str, ...]
) -> Npu | None:
    """Qualcomm's Hexagon NPU: a Qualcomm SoC (device tree, cpuinfo) or a FastRPC device node."""
    fastrpc = any((root / "dev").glob("fastrpc-*"))
    qualcomm = board_family == "qualcomm" or any(
        word in cpu_model.lower() for word in ("qualcomm", "snapdragon")
    )
    if not (fastrpc or qualcomm):
        return None
    via = ("onnxruntime:QNNExecutionProvider",) if "QNNExecutionProvider" in providers else ()
    evidence = "/dev/fastrpc-*" if fastrpc else "Qualcomm SoC"
    return Npu("Qualcomm Hexagon NPU", "qualcomm", evidence, via)


def apple_neural_engine(providers: tuple[str, ...]) -> Npu | None:
    """Every Apple-silicon Mac has a Neural Engine; CoreML is the only way in."""
    if platform.system() != "Darwin" or platform.machine() != "arm64":
        return None
    via = ("onnxruntime:CoreMLExecutionProvider",) if "CoreMLExecutionProvider" in providers else ()
    return Npu("Apple Neural Engine", "apple", "Apple silicon", via)
