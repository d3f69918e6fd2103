"""`edge` entry point: one subcommand per module, each with configure_parser() and main()."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from edge.cli import (
    bench,
    chat,
    cluster,
    devices,
    evaluation,
    export,
    info,
    plan,
    pull,
    quantize,
    run,
)
from edge.cli import serve as serve_command
from edge.errors import EdgeError

COMMANDS = {
    "pull": pull,
    "export": export,
    "quantize": quantize,
    "run": run,
    "chat": chat,
    "info": info,
    "bench": bench,
    "eval": evaluation,
    "devices": devices,
    "plan": plan,
    "serve": serve_command,
    "cluster": cluster,
}

DESCRIPTION = """\
edge runs language models on the devices you already own.

A MODEL is a registered name (smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b,
gemma3-270m), a GGUF file, a Hugging Face folder or an edge package directory. Names are
downloaded and exported on first use, then cached. Without a MODEL, edge uses smollm2-135m.

examples:
  edge run "Write a haiku about the sea."
  edge run qwen2.5-coder-0.5b "def fibonacci(n):" -n 64
  edge chat
  edge export model.gguf -o model-pkg --quant int4
  edge quantize model-pkg -o model-int8 --quant int8
  edge eval ppl model-pkg
  edge serve                         # an OpenAI-compatible API on http://127.0.0.1:8080
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edge", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in COMMANDS.items():
        module.configure_parser(
            sub.add_parser(
                name,
                help=module.HELP,
                description=module.HELP,
                formatter_class=argparse.RawDescriptionHelpFormatter,
            )
        )
    return parser


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Options may come anywhere, also between MODEL and PROMPT (`edge run MODEL -n 4 "hi"`):
    plain argparse stops filling a positional list at the first option, so a command's words
    after one are parsed again with the command's own intermixed parser."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extras = parser.parse_known_args(argv)
    if not extras or args.command not in argv:
        return parser.parse_args(argv)  # nothing left over, or a usage error to report
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    command = subparsers.choices[args.command]
    rest = argv[argv.index(args.command) + 1 :]
    try:
        return command.parse_intermixed_args(rest, argparse.Namespace(command=args.command))
    except TypeError:  # a command with sub-commands of its own: no intermixing there
        return parser.parse_args(argv)


def _version() -> str:
    import edge

    return f"edge {edge.__version__}"


def printable(text: str) -> str:
    """`text` with control characters escaped: an error may quote a name or value from an
    untrusted package or input, which must not drive the terminal (escape sequences)."""
    return "".join(c if c.isprintable() or c in "\n\t" else repr(c)[1:-1] for c in text)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; its exit code. Every EdgeError (a user's mistake or a bad input) is
    one "error:" line and exit 2; anything else is a bug in edge and keeps its traceback."""
    try:
        args = parse(argv)
    except SystemExit as exc:  # a usage error (exit 2, message printed) or --help/--version
        return exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    try:
        return COMMANDS[args.command].main(args) or 0
    except EdgeError as exc:
        print(f"edge {args.command}: error: {printable(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `edge run ... | head` closed the pipe: not an error
        _silence_stdout()
        return 0


def _silence_stdout() -> None:
    """Point stdout at /dev/null: Python's flush at exit would hit the closed pipe again and
    print "Exception ignored ... BrokenPipeError"."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # no real stdout (captured, closed): nothing to silence
        pass


if __name__ == "__main__":
    sys.exit(main())
