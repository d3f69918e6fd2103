"""edge chat [MODEL]: an interactive conversation, streamed, with the model's chat template."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from edge.cli.options import (
    add_draft_options,
    add_model_options,
    add_sampling_options,
    load_model,
    sampling_kwargs,
)
from edge.cli.run import check_text
from edge.errors import ConfigError as UsageError
from edge.errors import ContextOverflowError

if TYPE_CHECKING:
    from edge.model import Model

HELP = "chat interactively (/reset starts over, /exit or Ctrl-D quits)"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="model to chat with (default: smollm2-135m)",
    )
    parser.add_argument("--system", default=None, help="system message")
    add_model_options(parser)
    add_sampling_options(parser)
    add_draft_options(parser)


def main(args: argparse.Namespace) -> int:
    system = check_text(args.system, "--system") if args.system else None
    kwargs = sampling_kwargs(args)
    model = load_model(args, args.model)
    start = [{"role": "system", "content": system}] if system else []
    messages = list(start)
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            return 0
        except UnicodeDecodeError as exc:
            raise UsageError(f"the input is not valid {exc.encoding} text") from exc
        if line.strip() in ("/exit", "/quit"):
            return 0
        if line.strip() == "/reset":
            messages = list(start)
            continue
        if not line.strip():
            continue
        try:
            check_text(line, "this message")
        except UsageError as exc:  # one bad line must not end the conversation
            print(f"edge chat: {exc}; not sent", file=sys.stderr)
            continue
        messages.append({"role": "user", "content": line})
        try:
            dropped = fit_context(model, messages, len(start), args.max_tokens)
        except ContextOverflowError as exc:
            messages.pop()
            print(f"edge chat: {exc}; not sent", file=sys.stderr)
            continue
        if dropped:
            kept = " (the system message is kept)" if start else ""
            print(
                f"edge chat: the context window is full: dropped {dropped} earlier "
                f"turn{'s' if dropped > 1 else ''}{kept}",
                file=sys.stderr,
            )
        reply = []
        for response in model.chat_stream(messages, **kwargs):
            reply.append(response.text)
            sys.stdout.write(response.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        sys.stdout.flush()  # before anything the next turn says on stderr
        messages.append({"role": "assistant", "content": "".join(reply)})


def fit_context(model: Model, messages: list[dict[str, str]], keep: int, max_tokens: int) -> int:
    """Drop the oldest turns (a user message and the replies after it), never the first `keep`
    messages (the system message), until the prompt leaves room for a reply; how many turns
    were dropped. A reply longer than half the context is not reserved in full: generation
    stops at the context's end anyway. ContextOverflowError if even the newest message alone
    does not fit."""
    limit = model.engine.max_context
    room = limit - min(max_tokens, limit // 2)
    dropped = 0
    while True:
        prompt = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        tokens = len(model.tokenizer.encode(prompt, add_special_tokens=False))
        if tokens <= room:
            return dropped
        if len(messages) - keep <= 1:
            raise ContextOverflowError(
                f"this message takes {tokens} tokens with the chat template"
                f"{' and the system message' if keep else ''}; the context window is {limit} "
                f"tokens, {limit - room} of them kept for the reply (see --ctx and -n)"
            )
        end = keep + 1  # the oldest user message and the replies that follow it
        while end < len(messages) - 1 and messages[end]["role"] != "user":
            end += 1
        del messages[keep:end]
        dropped += 1
