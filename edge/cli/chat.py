"""edge chat [MODEL]: an interactive conversation, streamed, with the model's chat template."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
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
    from edge.generate import GenerationResponse
    from edge.model import Model

HELP = "chat interactively (/help lists the commands; /exit or Ctrl-D quits)"
COMMANDS = """\
/help           this list
/system TEXT    set the system message (the conversation goes on)
/reset          start over (asks first in a terminal)
/save FILE      write the conversation as JSON
/load FILE      continue a conversation saved with /save
/stats          tokens in the context, the last reply's speed
/exit, Ctrl-D   quit; Ctrl-C stops a reply, not the chat"""
MAX_SAVED_BYTES = 16 << 20  # a saved conversation is read whole: keep it bounded


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


@dataclass
class Conversation:
    """The messages so far; the system message, if any, is the first."""

    messages: list[dict[str, str]] = field(default_factory=list)
    last: GenerationResponse | None = None

    @property
    def keep(self) -> int:
        return 1 if self.messages and self.messages[0]["role"] == "system" else 0

    def set_system(self, text: str) -> None:
        if self.keep:
            self.messages[0] = {"role": "system", "content": text}
        else:
            self.messages.insert(0, {"role": "system", "content": text})


def main(args: argparse.Namespace) -> int:
    system = check_text(args.system, "--system") if args.system else None
    kwargs = sampling_kwargs(args, chat=True)
    model = load_model(args, args.model)
    chat = Conversation()
    if system:
        chat.set_system(system)
    interactive = sys.stdin.isatty()
    manifest = model.package.manifest
    print(
        f"{model.package.root.name} ({manifest.spec.architecture}, "
        f"{manifest.quant.scheme}), context {model.engine.max_context} tokens; "
        "/help for commands",
        file=sys.stderr,
    )
    while True:
        try:
            line = input(">>> " if interactive else "")
        except EOFError:
            return 0
        except KeyboardInterrupt:  # at the prompt: a reminder, not an exit
            print("\n(/exit or Ctrl-D quits)", file=sys.stderr)
            continue
        except UnicodeDecodeError as exc:
            raise UsageError(f"the input is not valid {exc.encoding} text") from exc
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            try:
                if command(text, chat, model, interactive):
                    return 0
            except UsageError as exc:  # a bad command must not end the conversation
                print(f"edge chat: {exc}", file=sys.stderr)
            continue
        try:
            check_text(line, "this message")
        except UsageError as exc:  # one bad line must not end the conversation
            print(f"edge chat: {exc}; not sent", file=sys.stderr)
            continue
        reply(model, chat, line, args.max_tokens, kwargs)


def reply(model: Model, chat: Conversation, line: str, max_tokens: int, kwargs: dict) -> None:
    """Stream the model's answer to `line`; Ctrl-C stops it and keeps what was said."""
    chat.messages.append({"role": "user", "content": line})
    try:
        dropped = fit_context(model, chat.messages, chat.keep, max_tokens)
    except ContextOverflowError as exc:
        chat.messages.pop()
        print(f"edge chat: {exc}; not sent", file=sys.stderr)
        return
    if dropped:
        kept = " (the system message is kept)" if chat.keep else ""
        print(
            f"edge chat: the context window is full: dropped {dropped} earlier "
            f"turn{'s' if dropped > 1 else ''}{kept}",
            file=sys.stderr,
        )
    parts: list[str] = []
    try:
        for response in model.chat_stream(chat.messages, **kwargs):
            parts.append(response.text)
            chat.last = response
            sys.stdout.write(response.text)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        print("[stopped]", file=sys.stderr)
    sys.stdout.write("\n")
    sys.stdout.flush()  # before anything the next turn says on stderr
    chat.messages.append({"role": "assistant", "content": "".join(parts)})


def command(text: str, chat: Conversation, model: Model, interactive: bool) -> bool:
    """Run a /command; True when the chat should end."""
    name, _, rest = text.partition(" ")
    rest = rest.strip()
    if name in ("/exit", "/quit"):
        return True
    if name == "/help":
        print(COMMANDS, file=sys.stderr)
    elif name == "/system" and rest:
        chat.set_system(check_text(rest, "the system message"))
        print("edge chat: system message set", file=sys.stderr)
    elif name == "/reset":
        if interactive and input("start over? [y/N] ").strip().lower() not in ("y", "yes"):
            return False
        chat.messages = chat.messages[: chat.keep]
        print("edge chat: the conversation starts over", file=sys.stderr)
    elif name == "/save" and rest:
        Path(rest).write_text(json.dumps(chat.messages, indent=1, ensure_ascii=False), "utf-8")
        print(f"edge chat: saved {len(chat.messages)} messages to {rest}", file=sys.stderr)
    elif name == "/load" and rest:
        try:
            chat.messages = read_conversation(Path(rest))
        except (OSError, ValueError) as exc:
            print(f"edge chat: cannot load {rest}: {exc}", file=sys.stderr)
            return False
        print(f"edge chat: loaded {len(chat.messages)} messages", file=sys.stderr)
    elif name == "/stats":
        print(stats_line(model, chat), file=sys.stderr)
    else:
        print(f"edge chat: unknown command {text!r:.60}; /help lists them", file=sys.stderr)
    return False


def read_conversation(path: Path) -> list[dict[str, str]]:
    """A conversation saved by /save: a JSON list of {"role", "content"} strings (untrusted:
    checked whole, bounded in size)."""
    if path.stat().st_size > MAX_SAVED_BYTES:
        raise ValueError(f"larger than {MAX_SAVED_BYTES >> 20} MiB")
    data = json.loads(path.read_text("utf-8"))
    roles = ("system", "user", "assistant")
    if not isinstance(data, list) or not all(
        isinstance(m, dict)
        and set(m) == {"role", "content"}
        and m["role"] in roles
        and isinstance(m["content"], str)
        for m in data
    ):
        raise ValueError('not a list of {"role": ..., "content": ...} messages')
    return [dict(m) for m in data]


def stats_line(model: Model, chat: Conversation) -> str:
    prompt = model.tokenizer.apply_chat_template(chat.messages, add_generation_prompt=True)
    used = len(model.tokenizer.encode(prompt, add_special_tokens=False)) if chat.messages else 0
    line = f"context: {used} of {model.engine.max_context} tokens, {len(chat.messages)} messages"
    if chat.last is not None:
        r = chat.last
        line += (
            f"; last reply: {r.generation_tokens} tokens at {r.generation_tps:.1f} tok/s, "
            f"prompt {r.prompt_tokens} tokens at {r.prompt_tps:.1f} tok/s"
        )
    return line


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
