"""Chat with a 4-bit model on a Raspberry Pi 4 or 5, on its CPU, within a memory budget.

On the Pi (64-bit Raspberry Pi OS): PyPI has aarch64 wheels of everything that runs a package
(onnxruntime, numpy, tokenizers, llvmlite, psutil); torch is never needed.

    python3 -m venv ~/edge && . ~/edge/bin/activate
    pip install "edge[export]"    # [export] pulls and exports models on the Pi; a package
                                  # exported elsewhere and copied over needs only `edge`
    python examples/raspberry_pi.py --budget 600MB              # chat; an empty line ends it
    python examples/raspberry_pi.py --budget 600MB --prompt "Why is the sky blue?"

MODEL defaults to SmolLM2-135M-Instruct, exported to int4 from its 4-bit GGUF on first use;
any registered name (qwen2.5-coder-0.5b fits a Pi 4 too), GGUF file or edge package works. The
planner places the model under the budget: resident when it fits, else the parts that do not
fit stream from storage while earlier blocks compute (slower; the plan says by how much).

Anywhere, without a Pi: what the planner predicts from the board's built-in profile (published
specs, derated), nothing loaded:

    python examples/raspberry_pi.py [MODEL] --dry-run --board pi4 --budget 600MB
"""

from __future__ import annotations

from device_demo import Demo, chat, load, parser, plan_for, run

from edge.planner.machine import local_devices, profile_devices

BOARDS = {"pi4": "Raspberry Pi 4 Model B (4 GB)", "pi5": "Raspberry Pi 5 (8 GB)"}


def main() -> None:
    options = parser(__doc__)
    options.add_argument(
        "--board",
        choices=sorted(BOARDS),
        default="pi5",
        help="the profile for --dry-run; otherwise its storage speed for streamed weights",
    )
    args = options.parse_args()
    demo = Demo.from_args(args)
    if demo.dry_run:
        devices = profile_devices([args.board], demo.budget)
        title = f"what if: {BOARDS[args.board]}, built-in profile {args.board!r}"
        plan_for(demo, devices, args.board, title=title, local=False)
        return
    # On the Pi: this CPU as measured (once, then cached), as `edge.load(MODEL, plan="auto",
    # memory_budget=SIZE)` plans it; printed first, to hold the speed against.
    devices = local_devices(demo.budget)
    plan = plan_for(demo, devices, args.board, title="this machine, measured", local=True)
    chat(load(demo, plan), demo)


if __name__ == "__main__":
    run(main)
