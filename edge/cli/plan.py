"""edge plan [MODEL]: which device would run which parts, and what it is predicted to cost."""

from __future__ import annotations

import argparse
import json

HELP = (
    "show how a model would be placed on this machine's devices (or a built-in profile's) "
    "and its predicted time to first token, tokens/s and peak memory"
)
EPILOG = """\
examples:
  edge plan smollm2-135m
  edge plan qwen2.5-coder-1.5b --memory-budget 600MB
  edge plan qwen2.5-coder-1.5b --profile rpi5        (what if: a Raspberry Pi 5)
  edge plan model-pkg --profile jetson-orin-nano --json
  edge plan smollm2-135m --profile my-pi.json     (edge devices --save-profile my-pi.json there)
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        help="registered name, GGUF file, Hugging Face folder or edge package "
        "(default: smollm2-135m)",
    )
    parser.add_argument(
        "--memory-budget",
        "--budget",
        dest="budget",
        default=None,
        metavar="SIZE",
        help="memory each device may use (600MB, 1.5GiB, 25%% of its memory); "
        "when nothing resident fits, the plan streams from disk",
    )
    parser.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="NAME|FILE",
        help="plan for a built-in device instead of this machine: rpi4, rpi5, "
        "jetson-orin-nano, snapdragon-8-gen-3, laptop-x86, core-ultra-7-155h (laptop-npu), "
        "or a profile file that `edge devices --save-profile FILE` wrote (repeatable)",
    )
    parser.add_argument(
        "--ctx",
        type=int,
        default=None,
        metavar="N",
        help="context window in tokens (default: min(4096, the model's))",
    )
    parser.add_argument(
        "--prompt",
        type=int,
        default=128,
        metavar="N",
        help="prompt tokens for the predicted time to first token (default: 128)",
    )
    parser.add_argument(
        "--mode",
        choices=("auto", "resident", "streamed"),
        default="auto",
        help="auto streams only when nothing resident fits (default)",
    )
    parser.add_argument(
        "--max-segments",
        type=int,
        default=3,
        metavar="K",
        help="contiguous segments per phase at most (default: 3)",
    )
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no progress bars (a pull or an export)"
    )


def main(args: argparse.Namespace) -> int:
    from edge.planner import PlanConfig
    from edge.planner.machine import plan_model
    from edge.planner.render import describe

    config = PlanConfig(
        max_context=args.ctx,
        prompt_tokens=args.prompt,
        mode=args.mode,
        max_segments=args.max_segments,
    )
    # The planner reads a package's manifest: a registered name is pulled (with its progress
    # shown), and a model not exported yet is planned on the layout its export would write.
    plan = plan_model(
        args.model,
        budget=args.budget,
        profiles=args.profile,
        config=config,
        progress=not args.quiet,
    )
    print(json.dumps(plan.to_dict(), indent=2) if args.json else describe(plan))
    return 0
