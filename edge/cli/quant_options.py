"""The quantization options `edge export` and `edge quantize` share."""

from __future__ import annotations

import argparse

SCHEMES = ("int8", "int4", "int4-mixed", "w8a8", "q-static-int8", "static-fp32")


def add_quant_options(parser: argparse.ArgumentParser, required: bool) -> None:
    """`required`: `edge quantize` (a scheme must be named); otherwise `--quant` defaults to
    "auto" (what the source was quantized to, see exporters/defaults.py) and takes "none"
    for float32."""
    parser.add_argument(
        "--quant",
        choices=SCHEMES if required else ("auto", "none", *SCHEMES),
        required=required,
        default=None if required else "auto",
        help="weight quantization: auto (default for export: a 4-bit GGUF gives int4 with "
        "AWQ, an 8-bit or float one int8, a Hugging Face folder float32), none (float32), "
        "int8, int4 (block-wise, MatMulNBits), "
        "int4-mixed (int4 with embedding, head and sensitive layers int8), "
        "w8a8 (int8 per channel x int8 activations per token on "
        "MatMulInteger: int4's decode speed with VNNI, steps of several "
        "tokens nearly free, the target for speculative decoding), "
        "q-static-int8 (QDQ graphs with fixed shapes for NPUs), "
        "or static-fp32 (the --static-ops standard graphs in float32, no QDQ: CoreML)",
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
        "--requantize-head",
        action="store_true",
        help="quantize the head to the scheme's bits even where the source ships it more "
        "precisely (a Q8_0 head is kept 8-bit by default); Qwen2.5-Coder-0.5B int4: 1.26x "
        "faster decoding, +1.2%% perplexity",
    )
    parser.add_argument(
        "--method",
        choices=("rtn", "awq"),
        default=None,
        help="rtn: round to nearest; awq: activation-aware scaling calibrated "
        "on real text (slower export, better int4 quality; the default for an int4 export)",
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
        "--static-ops",
        default=None,
        choices=("contrib", "standard"),
        help="q-static-int8: contrib (ONNX Runtime's GroupQueryAttention and norm ops, the "
        "default) or standard (standard ONNX ops only, static mask and fixed logit count: what "
        "the QNN and NNAPI providers take whole; the engine writes the KV cache); "
        "static-fp32 has standard ones only",
    )
    parser.add_argument(
        "--attention-bits",
        type=int,
        default=None,
        choices=(8, 16),
        help="q-static-int8 with --static-ops standard: the attention products' activation "
        "precision (queries, keys, values, probabilities; default: --activation-bits). "
        "16 with --activation-bits 8 is the mixed precision Qualcomm's HTP runs LLMs at; "
        "NNAPI takes 8-bit activations only",
    )
    parser.add_argument(
        "--accuracy-level",
        type=int,
        default=4,
        choices=(0, 1, 2, 3, 4),
        help="MatMulNBits compute: 4 = int8 activations (fast, default), 0 = float32",
    )


def export_config(args: argparse.Namespace, source: str | None = None):  # -> ExportConfig
    """The export the options ask for; "auto" follows `source` (exporters.defaults)."""
    from dataclasses import replace

    from exporters.export import ExportConfig

    if args.attention_bits is not None and (
        args.quant != "q-static-int8" or args.static_ops != "standard"
    ):
        from edge.errors import ConfigError

        raise ConfigError(
            "--attention-bits sets the bits of the standard-op static graphs' quantized "
            "attention: it needs --quant q-static-int8 --static-ops standard "
            f"(got --quant {args.quant} --static-ops {args.static_ops or 'contrib'})"
        )
    if args.quant == "auto":
        from exporters.defaults import default_export_config

        config = default_export_config(source) if source else ExportConfig()
        return replace(config, prefill_int8=args.prefill_int8, requantize_head=args.requantize_head)
    quant = None if args.quant == "none" else args.quant
    # An int4 export calibrates by default (AWQ: +12% perplexity on SmolLM2 against +25% for
    # plain rounding); re-quantizing a package (`edge quantize`) rounds unless asked.
    calibrated = source is not None and quant in ("int4", "int4-mixed")
    method = args.method or ("awq" if calibrated else "rtn")
    chunks = tuple(int(c) for c in args.static_chunks.split(",") if c.strip())
    try:
        return ExportConfig(
            quant=quant,
            block_size=args.block_size,
            symmetric=not args.asymmetric,
            prefill_int8=args.prefill_int8,
            accuracy_level=args.accuracy_level,
            method=method,
            static_chunks=chunks,
            static_context=args.static_context,
            static_activation_bits=args.activation_bits,
            static_ops=args.static_ops or ("standard" if quant == "static-fp32" else "contrib"),
            static_attention_bits=args.attention_bits,
            requantize_head=args.requantize_head,
        )
    except ValueError as exc:  # options that contradict each other: one line, no traceback
        from edge.errors import ConfigError

        raise ConfigError(f"these export options do not go together: {exc}") from None
