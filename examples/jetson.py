"""Chat on a Jetson Orin Nano: the planner splits the model between its GPU and its CPU.

On the Jetson (JetPack 6, aarch64): the GPU runs through PyTorch, from NVIDIA's JetPack wheel
(PyPI's aarch64 torch has no CUDA), or through onnxruntime-gpu where its JetPack build is
installed (then preferred: the same graphs as the CPU); the CPU runs ONNX Runtime.

    pip install "edge[export]"
    pip install torch --index-url https://pypi.jetson-ai-lab.io/jp6/cu126   # NVIDIA's wheel
    python examples/jetson.py --budget 4GB                   # chat; an empty line ends it
    python examples/jetson.py --prompt "Why is the sky blue?" --gpu-backend torch

The CPU and GPU share the board's 8 GB, so the budget caps both together. Without a usable
GPU backend the planner says why and puts everything on the CPU.

Anywhere, without a Jetson: the planner's plan over the built-in Orin Nano profiles (CPU and
GPU, published specs derated), nothing loaded:

    python examples/jetson.py [MODEL] --dry-run [--gpu-backend ort_cuda]
"""

from __future__ import annotations

from dataclasses import replace

from device_demo import Demo, chat, load, parser, plan_for, run

from edge.planner import Device
from edge.planner.machine import profile_devices

PLATFORM = "jetson-orin-nano"
GPU_BACKENDS = ("auto", "torch", "ort_cuda")
CUDA = "CUDAExecutionProvider"


def gpu_backend(choice: str) -> str:
    """auto: onnxruntime-gpu where its CUDA provider is installed, else torch."""
    if choice != "auto":
        return choice
    import onnxruntime

    return "ort_cuda" if CUDA in onnxruntime.get_available_providers() else "torch"


def devices(demo: Demo, backend: str) -> tuple[Device, ...]:
    """The Orin Nano's CPU (ONNX Runtime) and GPU (through `backend`, on CUDA), one memory
    pool."""
    options = (("device", "cuda"),) if backend == "torch" else ()
    return tuple(
        replace(d, backend=backend, options=options) if d.profile.kind == "gpu" else d
        for d in profile_devices([PLATFORM], demo.budget)
    )


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--gpu-backend", choices=GPU_BACKENDS, default="auto")
    args = options.parse_args()
    demo = Demo.from_args(args)
    backend = gpu_backend(args.gpu_backend)
    if demo.dry_run:
        title = f"what if: Jetson Orin Nano 8 GB, built-in profiles, GPU through {backend}"
        plan_for(demo, devices(demo, backend), PLATFORM, title=title, local=False)
        return
    # On the Jetson: the same profiles, and each backend is asked whether it sees its device
    # here (the plan says why not).
    title = f"Jetson Orin Nano, GPU through {backend}"
    plan = plan_for(demo, devices(demo, backend), PLATFORM, title=title, local=True)
    chat(load(demo, plan), demo)


if __name__ == "__main__":
    run(main)
