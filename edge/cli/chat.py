"""edge chat [MODEL]: an interactive conversation, streamed, with the model's chat template."""

from __future__ import annotations

import argparse
import sys

from edge.cli.options import (
    add_draft_options,
    add_model_options,
    add_sampling_options,
    load_model,
    sampling_kwargs,
)

HELP = "chat interactively (/reset starts over, /exit or Ctrl-D quits)"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL",
                        help="model to chat with (default: smollm2-135m)")
    parser.add_argument("--system", default=None, help="system message")
    add_model_options(parser)
    add_sampling_options(parser)
    add_draft_options(parser)


def main(args: argparse.Namespace) -> int:
    model = load_model(args, args.model)
    kwargs = sampling_kwargs(args)
    start = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(start)
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            return 0
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            messages = list(start)
            continue
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        reply = []
        for response in model.chat_stream(messages, **kwargs):
            reply.append(response.text)
            sys.stdout.write(response.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
