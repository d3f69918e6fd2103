"""edge eval ppl [MODEL]: perplexity on real text (default: CPython's pydoc topics)."""

from __future__ import annotations

import argparse
import sys

from edge.cli.options import add_model_options

HELP = "evaluate a model: perplexity on real text"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("metric", choices=["ppl"], help="ppl: perplexity (lower is better)")
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="a registered name, GGUF file, Hugging Face folder or edge package "
        "(default: SmolLM2-135M-Instruct)",
    )
    parser.add_argument(
        "--text",
        default=None,
        metavar="FILE",
        help="UTF-8 text file (default: CPython's pydoc_data.topics)",
    )
    # README's protocol: non-overlapping 512-token windows over the first 2048 tokens.
    parser.add_argument(
        "--window", type=int, default=512, help="tokens of context per window (default: 512)"
    )
    parser.add_argument(
        "--stride", type=int, default=512, help="tokens between windows (default: 512)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=2048,
        help="score the first N tokens of the text (default: 2048; 0: all of it)",
    )
    add_model_options(parser)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tqdm.auto import tqdm

    from edge.cli.options import load_model
    from edge.evaluate import PerplexityConfig, default_corpus, lead_ids, perplexity

    config = PerplexityConfig(args.window, args.stride, args.max_tokens or None)
    print(
        f"protocol: {config.window}-token windows every {config.stride} tokens over "
        f"{f'the first {config.max_tokens} tokens' if config.max_tokens else 'all'} of "
        f"{args.text or 'pydoc_data.topics'}",
        file=sys.stderr,
    )
    model = load_model(args, args.model)
    text = Path(args.text).read_text(encoding="utf-8") if args.text else default_corpus()
    ids = model.tokenizer.encode(text, add_special_tokens=False)
    total = min(len(ids), config.max_tokens or len(ids)) - 1
    with tqdm(
        total=total, desc="perplexity", unit="tok", disable=args.quiet, file=sys.stderr
    ) as bar:
        lead = lead_ids(model.tokenizer)
        result = perplexity(model.engine, ids, config, progress=bar.update, lead=lead)
    led = f", each window after {model.tokenizer.decode(lead, skip_special_tokens=False)}"
    print(
        f"perplexity {result.perplexity:.4f} over {result.tokens} tokens "
        f"(window {config.window}, stride {config.stride}{led if lead else ''}, "
        f"{model.package.root.name})"
    )
    return 0
