"""edge export SRC -o DIR: turn a GGUF file or Hugging Face folder into an edge package."""

from __future__ import annotations

import argparse

from edge.cli.quant_options import add_quant_options, export_config

HELP = "export a GGUF file, Hugging Face folder or registered model to an edge package"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source", metavar="SRC", help="GGUF file, Hugging Face folder, or a registered model name"
    )
    parser.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="DIR",
        help="package directory to create (missing or empty)",
    )
    parser.add_argument(
        "-f",
        "--force",
        action="store_true",
        help="replace DIR if it holds an edge package and nothing else (the old "
        "package stays until the new one is complete); a folder with other "
        "files, or the one holding SRC, is never replaced",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_quant_options(parser, required=False)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from edge.models.registry import REGISTRY
    from exporters.export import export

    source = args.source
    if not Path(source).exists() and source in REGISTRY:
        from edge.models.pull import pull

        source = pull(source, progress=not args.quiet)
    print(
        export(
            source,
            args.output,
            export_config(args, str(source)),
            overwrite=args.force,
            progress=not args.quiet,
        )
    )
    return 0
