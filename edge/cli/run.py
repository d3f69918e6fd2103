"""edge run [MODEL] PROMPT: generate text, streamed to stdout so it pipes."""

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
from edge.errors import ConfigError as UsageError
from edge.generate import SpeculationStats

HELP = "generate text from a prompt (the text alone goes to stdout)"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "words",
        nargs="+",
        metavar="[MODEL] PROMPT",
        help="optional model, then the prompt ('-' reads it from stdin)",
    )
    parser.add_argument(
        "--chat",
        action="store_true",
        help="wrap the prompt in the model's chat template as a user turn",
    )
    parser.add_argument("--system", default=None, help="system message (with --chat)")
    parser.add_argument(
        "--stats", action="store_true", help="print token counts and speeds to stderr"
    )
    add_model_options(parser)
    add_sampling_options(parser)
    add_draft_options(parser)


def split_model_prompt(words: list[str]) -> tuple[str | None, str]:
    if len(words) > 2:
        raise UsageError('quote the prompt: edge run [MODEL] "PROMPT"')
    model, prompt = (None, words[0]) if len(words) == 1 else (words[0], words[1])
    if prompt == "-":
        return model, check_text(read_stdin(), "the prompt on stdin")
    return model, check_text(prompt, "the prompt")


def read_stdin() -> str:
    """All of stdin as text; bytes that are not text in its encoding are a usage error."""
    try:
        return sys.stdin.read()
    except UnicodeDecodeError as exc:
        # (exc.start counts from the chunk being decoded, not from the start of stdin)
        raise UsageError(
            f"stdin is not valid {exc.encoding} text (it holds the byte "
            f"{exc.object[exc.start : exc.start + 1]!r}); convert it to "
            f"{exc.encoding} first"
        ) from exc


def check_text(text: str, what: str) -> str:
    """`text`, if it can be encoded: an argument with invalid UTF-8 bytes reaches Python as
    lone surrogates, which the tokenizer rejects with a bare TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"{what} is not valid UTF-8 (an undecodable byte at character {exc.start})"
        ) from exc
    return text


def speculation_line(s: SpeculationStats) -> str:
    """The --stats line of a speculative response; its speedup is measured (see
    `SpeculationStats`), and said to be unknown rather than guessed."""
    sources = (
        " ["
        + ", ".join(f"{name} {accepted}/{drafted}" for name, drafted, accepted in s.by_source)
        + "]"
        if len(s.by_source) > 1
        else ""
    )
    speed = (
        "speed against plain decoding not measured yet"
        if s.speedup is None
        else f"{s.speedup:.2f}x plain decoding (measured)"
    )
    return (
        f"speculation: {s.accepted}/{s.drafted} draft tokens accepted "
        f"({s.acceptance:.0%}){sources}, {s.tokens_per_pass:.2f} tokens per target pass, "
        f"{speed}{'' if s.active else ' (switched itself off)'}"
    )


def main(args: argparse.Namespace) -> int:
    model_name, prompt = split_model_prompt(args.words)
    system = check_text(args.system, "--system") if args.system else None
    kwargs = sampling_kwargs(args, chat=args.chat)
    model = load_model(args, model_name)
    if args.chat:
        messages = [{"role": "system", "content": system}] if system else []
        responses = model.chat_stream([*messages, {"role": "user", "content": prompt}], **kwargs)
    else:
        responses = model.stream(prompt, **kwargs)
    last = None
    for last in responses:
        sys.stdout.write(last.text)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats and last is not None:
        print(
            f"prompt: {last.prompt_tokens} tokens, {last.prompt_tps:.1f} tok/s | "
            f"generated: {last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s | "
            f"finish: {last.finish_reason}",
            file=sys.stderr,
        )
        if last.speculation is not None:
            print(speculation_line(last.speculation), file=sys.stderr)
        report = model.engine.report()
        if report:
            print(report, file=sys.stderr)
    return 0
