"""edge pull NAME: download a registered model's GGUF file into the cache."""

from __future__ import annotations

import argparse

from edge.models.pull import pull
from edge.models.registry import REGISTRY

HELP = "download a registered model (verified by sha256) into edge's cache"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "name",
        choices=sorted(REGISTRY),
        metavar="NAME",
        help="one of: " + ", ".join(sorted(REGISTRY)),
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="re-hash a cached file even if it did not change since it was "
        "last verified (a changed file is always re-hashed)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def main(args: argparse.Namespace) -> int:
    print(pull(args.name, progress=not args.quiet, verify=args.verify))
    return 0
