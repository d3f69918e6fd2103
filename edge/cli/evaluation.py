"""edge eval ppl [MODEL]: perplexity on real text (default: CPython's pydoc topics)."""

from __future__ import annotations

import argparse
import sys

from edge.cli.options import add_model_options

HELP = "evaluate a model: perplexity on real text"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metric", choices=["ppl"], help="ppl: perplexity (lower is better)")
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL")
    parser.add_argument(
        "--text",
        default=None,
        metavar="FILE",
        help="UTF-8 text file (default: CPython's pydoc_data.topics)",
    )
    parser.add_argument("--window", type=int, default=512, help="tokens of context per window")
    parser.add_argument("--stride", type=int, default=256, help="tokens between windows")
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="score only the first N tokens of the text"
    )
    add_model_options(parser)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from edge.cli.options import load_model
    from edge.evaluate import PerplexityConfig, default_corpus, perplexity

    config = PerplexityConfig(args.window, args.stride, args.max_tokens)
    model = load_model(args, args.model)
    text = Path(args.text).read_text(encoding="utf-8") if args.text else default_corpus()
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    total = min(len(ids), args.max_tokens or len(ids)) - 1
    with tqdm(
        total=total, desc="perplexity", unit="tok", disable=args.quiet, file=sys.stderr
    ) as bar:
        result = perplexity(model.engine, ids, config, progress=bar.update)
    print(
        f"perplexity {result.perplexity:.4f} over {result.tokens} tokens "
        f"(window {config.window}, stride {config.stride}, {model.package.root.name})"
    )
    return 0
