"""What the device examples (raspberry_pi.py, jetson.py, laptop_npu.py) share; not run itself.

Each example plans a model for its device with edge's planner, the same functions `edge plan`
uses: with `--dry-run` for the device's built-in profile (its numbers cite their published
source), anywhere, without loading the model; without it on the device itself, where it loads
the planned placement and chats. The planner's predictions are printed either way, so what
the device does can be held against them.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import edge
from edge.planner import Device, Plan, PlanConfig
from edge.planner.machine import plan_devices, platform_config
from edge.planner.render import describe


@dataclass(frozen=True)
class Demo:
    """What an example was asked for on its command line."""

    model: str | None  # what edge.load takes; None: SmolLM2-135M-Instruct, int4 by default
    budget: str | None  # each device's memory budget ("600MB", "25%"); None: its memory
    max_context: int
    prompt: str | None  # answer this once and exit; None: chat until an empty line
    max_tokens: int
    dry_run: bool

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Demo:
        return cls(args.model, args.budget, args.ctx, args.prompt, args.max_tokens, args.dry_run)

    def config(self, platform: str) -> PlanConfig:
        """The plan's settings, with the platform's usual storage for streamed weights."""
        return platform_config(PlanConfig(max_context=self.max_context), platform)


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every device example takes; the example adds its own."""
    out = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    out.add_argument("model", nargs="?", default=None, help="name, GGUF, folder or package")
    out.add_argument("--budget", default=None, metavar="SIZE", help="memory budget (600MB, 25%%)")
    out.add_argument("--ctx", type=int, default=1024, metavar="N", help="context window (1024)")
    out.add_argument("--prompt", default=None, help="answer this once and exit (no chat)")
    out.add_argument("--max-tokens", type=int, default=128, metavar="N", help="per reply (128)")
    out.add_argument(
        "--dry-run",
        action="store_true",
        help="print the planner's prediction for the device's built-in profile; load nothing",
    )
    return out


def plan_for(
    demo: Demo, devices: Sequence[Device], platform: str, *, title: str, local: bool
) -> Plan:
    """Plan `demo.model` on `devices` and print it: which device runs which parts, predicted
    time to first token, tokens/s and peak memory. `local`: the devices are this machine's,
    so each backend is also asked whether it is installed."""
    plan = plan_devices(demo.model, devices, demo.config(platform), local=local, progress=True)
    print(title)
    for device in devices:
        print(f"  {device.label}: {device.profile.source}")
    print(describe(plan))
    return plan


def load(demo: Demo, plan: Plan) -> edge.Model:
    """The model on the plan's placements: prompts on one, decode steps on the other."""
    from edge.package import open_package
    from edge.resolve import resolve_package

    package = open_package(resolve_package(demo.model))
    model = edge.Model(package, plan.engine_config())
    print(model.engine.describe())
    return model


def chat(model: edge.Model, demo: Demo) -> None:
    """Answer `demo.prompt` once, or chat (each turn prefills only what is new) until an
    empty line or end of input."""
    messages: list[dict[str, str]] = []
    while True:
        if demo.prompt is not None:
            text = demo.prompt
        else:
            try:
                text = input("you> ").strip()
            except EOFError:
                text = ""
        if not text:
            return
        messages.append({"role": "user", "content": text})
        reply, last = "", None
        print("edge> ", end="", flush=True)
        for last in model.chat_stream(messages, max_tokens=demo.max_tokens):
            print(last.text, end="", flush=True)
            reply += last.text
        if last is not None:
            print(f"\n      ({last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s)")
        messages.append({"role": "assistant", "content": reply})
        if demo.prompt is not None:
            return


def run(main: Callable[[], None]) -> None:
    """Run an example's `main`; edge's own errors (a budget too small, a model unknown) are
    said in one line, not as a traceback."""
    try:
        main()
    except edge.EdgeError as exc:
        raise SystemExit(f"error: {exc}") from None
