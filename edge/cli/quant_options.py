"""The quantization options `edge export` and `edge quantize` share."""

from __future__ import annotations

import argparse

SCHEMES = ("int8", "int4", "int4-mixed", "w8a8", "q-static-int8")


def add_quant_options(parser: argparse.ArgumentParser, required: bool) -> None:
    parser.add_argument(
        "--quant",
        choices=SCHEMES,
        required=required,
        help="weight quantization: int8, int4 (block-wise, MatMulNBits), "
        "int4-mixed (int4 with embedding, head and sensitive layers int8), "
        "w8a8 (int8 per channel x int8 activations per token on "
        "MatMulInteger: int4's decode speed with VNNI, steps of several "
        "tokens nearly free, the target for speculative decoding), "
        "or q-static-int8 (QDQ graphs with fixed shapes for NPUs)",
    )
    parser.add_argument(
        "--block-size",
        type=int,
        default=32,
        choices=(16, 32, 64, 128, 256),
        help="int4 block size along the input dimension (default 32)",
    )
    parser.add_argument(
        "--asymmetric",
        action="store_true",
        help="store a zero point per block (default: symmetric)",
    )
    parser.add_argument(
        "--prefill-int8",
        action="store_true",
        help="also store int8 weights for prompts: per-token int8 activations "
        "on MatMulInteger (AMX/VNNI), ~3x faster prefill for ~1x more "
        "weight memory",
    )
    parser.add_argument(
        "--method",
        choices=("rtn", "awq"),
        default="rtn",
        help="rtn: round to nearest; awq: activation-aware scaling calibrated "
        "on real text (slower export, better int4 quality)",
    )
    parser.add_argument(
        "--static-chunks",
        default="1,64",
        metavar="N,N",
        help="q-static-int8: step lengths with a graph each (must include 1)",
    )
    parser.add_argument(
        "--static-context",
        type=int,
        default=1024,
        metavar="N",
        help="q-static-int8: fixed KV-cache length",
    )
    parser.add_argument(
        "--activation-bits",
        type=int,
        default=16,
        choices=(8, 16),
        help="q-static-int8: activation precision (16 = A16W8, what NPUs run "
        "LLMs at; 8 adds SmoothQuant scaling and loses more)",
    )
    parser.add_argument(
        "--accuracy-level",
        type=int,
        default=4,
        choices=(0, 1, 2, 3, 4),
        help="MatMulNBits compute: 4 = int8 activations (fast, default), 0 = float32",
    )


def export_config(args: argparse.Namespace):  # -> exporters.export.ExportConfig
    from exporters.export import ExportConfig

    chunks = tuple(int(c) for c in args.static_chunks.split(",") if c.strip())
    return ExportConfig(
        quant=args.quant,
        block_size=args.block_size,
        symmetric=not args.asymmetric,
        prefill_int8=args.prefill_int8,
        accuracy_level=args.accuracy_level,
        method=args.method,
        static_chunks=chunks,
        static_context=args.static_context,
        static_activation_bits=args.activation_bits,
    )
