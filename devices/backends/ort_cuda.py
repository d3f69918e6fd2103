"""ONNX Runtime's CUDA execution provider (NVIDIA GPUs, Jetson with onnxruntime-gpu).

The same sessions as the CPU backend, created with the CUDA provider first. The engine's
buffers (step inputs, activations and the KV cache) stay in host memory, bound by address, so
ONNX Runtime copies a segment's KV cache to the GPU and back every step: correct everywhere,
fast only for short contexts. Keeping the cache on the device (OrtValues on "cuda") is the next
step; it could not be measured here (the lent GPU machine's onnxruntime has no CUDA provider).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from devices.backends.ort_cpu import CPU, OrtCpuBackend

CUDA = "CUDAExecutionProvider"


class OrtCudaBackend(OrtCpuBackend):
    """Options: `device_id` (default 0), `gpu_mem_limit` (bytes; default: no limit), plus the
    CPU backend's `threads` and `optimization` for the nodes CUDA does not take."""

    name: ClassVar[str] = "ort_cuda"
    OPTIONS: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        **OrtCpuBackend.OPTIONS,
        "device_id": int,
        "gpu_mem_limit": int,
    }
    provider: ClassVar[str] = CUDA

    @property
    def device(self) -> str:
        return f"CUDA GPU {int(self.options.get('device_id', 0))}"

    def providers(self) -> Sequence[Any]:
        cuda: dict[str, str] = {
            "device_id": str(int(self.options.get("device_id", 0))),
            "arena_extend_strategy": "kSameAsRequested",
        }
        if "gpu_mem_limit" in self.options:
            cuda["gpu_mem_limit"] = str(int(self.options["gpu_mem_limit"]))
        return [(CUDA, cuda), CPU]
