"""Options several subcommands share, so their spelling and help stay the same everywhere."""

from __future__ import annotations

import argparse
from typing import Any


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ctx", type=int, default=None, metavar="N",
                        help="context window in tokens (default: min(4096, the model's))")
    parser.add_argument("-t", "--threads", type=int, default=None,
                        help="CPU threads (default: physical cores)")
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars on stderr")


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument("-n", "--max-tokens", type=int, default=256,
                       help="tokens to generate at most (default: 256)")
    group.add_argument("--temperature", type=float, default=0.0,
                       help="0 = greedy, deterministic (default); 0.7 is a common choice")
    group.add_argument("--top-k", type=int, default=0, help="keep the k likeliest (0 = off)")
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1 = off)")
    group.add_argument("--min-p", type=float, default=0.0,
                       help="drop tokens below min-p x the top probability (0 = off)")
    group.add_argument("--repeat-penalty", type=float, default=1.0,
                       help="penalise recently generated tokens (1 = off)")
    group.add_argument("--seed", type=int, default=None, help="random seed for sampling")
    group.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="stop when TEXT is generated (repeatable)")


def sampling_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {"max_tokens": args.max_tokens, "temperature": args.temperature,
            "top_k": args.top_k, "top_p": args.top_p, "min_p": args.min_p,
            "repetition_penalty": args.repeat_penalty, "seed": args.seed,
            "stop": args.stop}


def load_model(args: argparse.Namespace, model: str | None):
    import edge

    return edge.load(model, max_context=args.ctx, threads=args.threads,
                     progress=not args.quiet)
