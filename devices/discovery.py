"""What this machine has: CPU, RAM, board, GPUs, NPUs, runtimes, and what to install for the rest.

>>> from devices.discovery import discover
>>> machine = discover()
>>> machine.cpu.has("avx2"), machine.memory.budget > 0  # doctest: +SKIP
(True, True)

Files are read under `root` so tests can fake a Raspberry Pi or a Jetson; the probes that ask
the running process instead (onnxruntime, openvino, nvidia-smi, pyserial, torch) always describe
this interpreter. torch is imported only with `probe_torch=True` (it costs seconds).
"""

from __future__ import annotations

import dataclasses
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devices import boards, gpus, hints, npus
from devices.boards import Board, SerialPort
from devices.cpu_info import CpuInfo, read_cpu
from devices.gpus import Gpu, TorchInfo
from devices.hints import Hint
from devices.memory_info import MemoryInfo, read_memory
from devices.npus import Npu, OpenVinoInfo, OrtInfo

HOST_ROOT = Path("/")


@dataclass(frozen=True)
class Machine:
    """Everything discovery found; `to_dict()` is its JSON form (`edge devices --json`)."""

    system: str
    cpu: CpuInfo
    memory: MemoryInfo
    board: Board | None
    jetson_release: str | None
    gpus: tuple[Gpu, ...]
    npus: tuple[Npu, ...]
    onnxruntime: OrtInfo
    openvino: OpenVinoInfo | None
    torch: TorchInfo | None
    serial_ports: tuple[SerialPort, ...] | None
    hints: tuple[Hint, ...]
    torch_probed: bool = False  # with `torch` None: not asked (False) or not installed (True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict, with the derived values (memory budget, ISA disagreements)."""
        data = dataclasses.asdict(self)
        data["memory"]["budget"] = self.memory.budget
        data["cpu"]["disagreements"] = list(self.cpu.disagreements)
        return data

    @property
    def is_jetson(self) -> bool:
        return self.jetson_release is not None or (
            self.board is not None and self.board.family == "jetson"
        )


def _nvidia_via(ort: OrtInfo, torch_info: TorchInfo | None) -> tuple[str, ...]:
    via = tuple(
        f"onnxruntime:{p}"
        for p in ("CUDAExecutionProvider", "TensorrtExecutionProvider")
        if p in ort.providers
    )
    return via + (("torch:cuda",) if torch_info is not None and torch_info.cuda_available else ())


def find_gpus(
    root: Path,
    board: Board | None,
    jetson: bool,
    memory: MemoryInfo,
    ort: OrtInfo,
    openvino: OpenVinoInfo | None,
    torch_info: TorchInfo | None,
) -> tuple[Gpu, ...]:
    """NVIDIA (nvidia-smi, else torch), Jetson's integrated GPU, Intel and Apple GPUs."""
    nvidia_via = _nvidia_via(ort, torch_info)
    if jetson:  # nvidia-smi on a Jetson reports "[N/A]" memory: the board's RAM is the truth
        model = board.model if board is not None else "NVIDIA Jetson"
        found = [gpus.jetson_gpu(model, memory.total, memory.available)]
    else:
        found = list(gpus.nvidia_gpus())
        if not found and torch_info is not None:
            found = list(torch_info.cuda_devices)
    found = [dataclasses.replace(g, usable_via=nvidia_via) for g in found]
    found += npus.intel_gpus(root, openvino, ort.providers)
    if platform.system() == "Darwin" and platform.machine() == "arm64" and root == HOST_ROOT:
        via = (
            ("onnxruntime:CoreMLExecutionProvider",)
            if ("CoreMLExecutionProvider" in ort.providers)
            else ()
        )
        if torch_info is not None and torch_info.mps_available:
            via += ("torch:mps",)
        found.append(
            Gpu(
                0,
                "Apple GPU",
                "apple",
                memory.total,
                memory.available,
                unified_memory=True,
                source="Apple silicon",
                usable_via=via,
            )
        )
    return tuple(found)


def find_npus(
    root: Path, board: Board | None, cpu: CpuInfo, ort: OrtInfo, openvino: OpenVinoInfo | None
) -> tuple[Npu, ...]:
    family = board.family if board is not None else None
    found = (
        npus.intel_npu(root, cpu.model, openvino, ort.providers),
        npus.hexagon_npu(root, family, cpu.model, ort.providers),
        npus.apple_neural_engine(ort.providers) if root == HOST_ROOT else None,
    )
    return tuple(n for n in found if n is not None)


def discover(root: Path = HOST_ROOT, *, probe_torch: bool = False) -> Machine:
    """Describe this machine (or the file tree under `root`, for tests) in one `Machine`."""
    host = Path(root) == HOST_ROOT
    cpu = read_cpu(root, host=host)
    memory = read_memory(root, host=host)
    board = boards.read_board(root)
    release = boards.jetson_release(root)
    jetson = release is not None or (board is not None and board.family == "jetson")
    ort = npus.read_onnxruntime()
    openvino = npus.read_openvino()
    torch_info = gpus.probe_torch() if probe_torch else None
    found_gpus = find_gpus(root, board, jetson, memory, ort, openvino, torch_info)
    found_npus = find_npus(root, board, cpu, ort, openvino)
    ports = boards.serial_ports()
    system = platform.system()
    advice = (
        hints.nvidia_hints(found_gpus, board, ort)
        + hints.intel_hints(found_gpus, found_npus, openvino)
        + hints.other_hints(found_npus, ort, system, ports is not None)
    )
    return Machine(
        system,
        cpu,
        memory,
        board,
        release,
        found_gpus,
        found_npus,
        ort,
        openvino,
        torch_info,
        ports,
        tuple(advice),
        torch_probed=probe_torch,
    )
