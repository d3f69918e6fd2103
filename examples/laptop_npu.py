"""Chat on an Intel laptop with an NPU: prompts on the NPU, decode steps on the CPU.

An NPU compiles fixed-shape int8 graphs: it takes a prompt in chunks fast and wastes itself on
one-token decode steps, which the CPU runs better. The planner places each phase; OpenVINO
drives the NPU (and, with --gpu, the Arc iGPU, which the planner may prefer for prompts),
ONNX Runtime the CPU. On the laptop (Core Ultra, with Intel's NPU driver installed):

    pip install "edge[export,openvino]"
    edge export smollm2-135m -o smollm2-npu --quant q-static-int8   # the NPU's static graphs
    python examples/laptop_npu.py smollm2-npu                  # chat; an empty line ends it
    python examples/laptop_npu.py smollm2-npu --prompt "Why is the sky blue?" --gpu

A package without static int8 graphs runs too, and so does a laptop without an NPU: the plan
then says why the NPU is unused. On the laptop OpenVINO's NPU compiler has the last word, part
by part (the blocks' ONNX Runtime attention op may be refused there; the plan says so too).

Anywhere, without the laptop: the planner's plan over the built-in Core Ultra 7 155H profiles
(published specs, derated), nothing loaded:

    python examples/laptop_npu.py [MODEL] --dry-run [--gpu]
"""

from __future__ import annotations

from device_demo import Demo, chat, load, parser, plan_for, run

from edge.planner import Device
from edge.planner.machine import profile_devices

PLATFORM = "core-ultra-7-155h"


def devices(demo: Demo, gpu: bool) -> tuple[Device, ...]:
    """The laptop's CPU and NPU, and its iGPU with `gpu`."""
    profiles = profile_devices([PLATFORM], demo.budget)
    return tuple(d for d in profiles if gpu or d.profile.kind != "gpu")


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--gpu", action="store_true", help="offer the Arc iGPU to the planner")
    args = options.parse_args()
    demo = Demo.from_args(args)
    if demo.dry_run:
        title = "what if: Intel Core Ultra 7 155H laptop, built-in profiles"
        plan_for(demo, devices(demo, args.gpu), PLATFORM, title=title, local=False)
        return
    # Here each backend is also asked whether it sees its device: the plan says why not.
    title = "this laptop, through the Core Ultra 7 155H profiles"
    plan = plan_for(demo, devices(demo, args.gpu), PLATFORM, title=title, local=True)
    chat(load(demo, plan), demo)


if __name__ == "__main__":
    run(main)
