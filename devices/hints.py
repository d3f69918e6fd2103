"""What to install to use hardware that was seen but that no installed runtime can drive.

Each rule compares the hardware found with the runtimes found; a hint names the package or
driver and why it is suggested, so `edge devices` never leaves a user guessing why their GPU
or NPU sits idle.
"""

from __future__ import annotations

from dataclasses import dataclass

from devices.boards import Board
from devices.gpus import Gpu
from devices.npus import Npu, OpenVinoInfo, OrtInfo

JETSON_WHEEL = (
    "the onnxruntime-gpu wheel built for your JetPack (NVIDIA's Jetson AI Lab pip "
    "index; PyPI's onnxruntime-gpu has no Jetson build)"
)
ORT_GPU = "pip uninstall onnxruntime && pip install onnxruntime-gpu"  # the two wheels clash


@dataclass(frozen=True)
class Hint:
    """One missing piece: what it would unlock, what to install, and what was seen."""

    unlocks: str
    install: str
    reason: str
    optional: bool = False

    def __post_init__(self) -> None:
        if not (self.unlocks and self.install and self.reason):
            raise ValueError(f"Hint needs unlocks, install and reason, got {self!r}")


def nvidia_hints(gpus: tuple[Gpu, ...], board: Board | None, ort: OrtInfo) -> list[Hint]:
    """An NVIDIA GPU without ONNX Runtime's CUDA provider (on a Jetson: without its wheel)."""
    nvidia = [g for g in gpus if g.vendor == "nvidia"]
    if not nvidia or "CUDAExecutionProvider" in ort.providers:
        return []
    on_jetson = board is not None and board.family == "jetson"
    jetson = on_jetson or any(g.unified_memory for g in nvidia)
    reason = (
        f"{nvidia[0].source} sees {nvidia[0].name} but onnxruntime {ort.version} has no "
        "CUDAExecutionProvider"
    )
    return [Hint("the NVIDIA GPU", JETSON_WHEEL if jetson else ORT_GPU, reason)]


def intel_hints(
    gpus: tuple[Gpu, ...], npus: tuple[Npu, ...], openvino: OpenVinoInfo | None
) -> list[Hint]:
    """Intel NPU or GPU hardware that OpenVINO is missing for, or whose driver it cannot see."""
    hints: list[Hint] = []
    npu = next((n for n in npus if n.vendor == "intel"), None)
    gpu = next((g for g in gpus if g.vendor == "intel"), None)
    if openvino is None:
        if npu is not None:
            hints.append(
                Hint(
                    "the Intel NPU",
                    "pip install openvino",
                    f"{npu.evidence} exists but openvino is not installed",
                )
            )
        elif gpu is not None:
            hints.append(
                Hint(
                    "the Intel GPU",
                    "pip install openvino",
                    f"{gpu.source} exists but openvino is not installed",
                )
            )
        return hints
    if npu is not None and not npu.usable_via:
        hints.append(
            Hint(
                "the Intel NPU",
                "Intel's NPU driver (github.com/intel/linux-npu-driver)"
                " and membership of the render group",
                f"{npu.evidence} exists but OpenVINO lists no NPU device",
            )
        )
    if gpu is not None and not gpu.usable_via:
        hints.append(
            Hint(
                "the Intel GPU",
                "Intel's compute runtime (intel-opencl-icd, "
                "libze-intel-gpu1) and membership of the render group",
                f"{gpu.source} exists but OpenVINO lists no GPU device",
            )
        )
    return hints


def other_hints(
    npus: tuple[Npu, ...], ort: OrtInfo, system: str, serial_installed: bool
) -> list[Hint]:
    """Qualcomm and Apple NPUs, DirectML on Windows, pyserial for serial-attached boards."""
    hints: list[Hint] = []
    for npu in npus:
        if npu.usable_via:
            continue
        if npu.vendor == "qualcomm":
            hints.append(
                Hint(
                    npu.name,
                    "pip install onnxruntime-qnn",
                    f"{npu.evidence} seen but onnxruntime has no QNNExecutionProvider",
                )
            )
        elif npu.vendor == "apple":
            hints.append(
                Hint(
                    npu.name,
                    "pip install --force-reinstall onnxruntime (the macOS "
                    "wheel includes CoreMLExecutionProvider)",
                    "Apple silicon but onnxruntime has no CoreMLExecutionProvider",
                )
            )
    if system == "Windows" and "DmlExecutionProvider" not in ort.providers:
        hints.append(
            Hint(
                "any DirectX 12 GPU",
                "pip install onnxruntime-directml",
                "Windows without DmlExecutionProvider",
                optional=True,
            )
        )
    if not serial_installed:
        hints.append(
            Hint(
                "listing boards attached over USB serial",
                "pip install pyserial",
                "pyserial is not installed",
                optional=True,
            )
        )
    return hints
