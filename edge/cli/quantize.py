"""edge quantize PACKAGE -o DIR --quant ...: a quantized copy of a float32 package."""

from __future__ import annotations

import argparse

from edge.cli.quant_options import add_quant_options, export_config

HELP = "quantize a float32 edge package into a new package (the source is left untouched)"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("package", metavar="PACKAGE", help="float32 edge package directory")
    parser.add_argument("-o", "--output", required=True, metavar="DIR")
    parser.add_argument("-f", "--force", action="store_true", help="replace DIR if it exists")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    add_quant_options(parser, required=True)


def main(args: argparse.Namespace) -> int:
    from exporters.export import quantize_package

    print(quantize_package(args.package, args.output, export_config(args),
                           overwrite=args.force, progress=not args.quiet))
    return 0
