"""edge quantize PACKAGE -o DIR --quant ...: a quantized copy of a float32 package."""

from __future__ import annotations

import argparse

from edge.cli.quant_options import add_quant_options, export_config

HELP = "quantize a float32 edge package into a new package (the source is left untouched)"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "package",
        metavar="PACKAGE|MODEL",
        help="float32 edge package, or a model name / GGUF / Hugging Face "
        "folder (exported to float32 first, and cached)",
    )
    parser.add_argument(
        "-o", "--output", required=True, metavar="DIR", help="the quantized package's folder"
    )
    parser.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="replace DIR if it holds an edge package and nothing else",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_quant_options(parser, required=True)


def main(args: argparse.Namespace) -> int:
    from edge.resolve import resolve_package
    from exporters.export import quantize_package

    source = resolve_package(args.package, progress=not args.quiet)
    print(
        quantize_package(
            source, args.output, export_config(args), overwrite=args.force, progress=not args.quiet
        )
    )
    return 0
