"""edge info PACKAGE: what a package holds (architecture, parts, sizes, provenance)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.quant_record import QuantizationInfo

HELP = "describe an edge package (or the package a model name resolves to)"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "package",
        nargs="?",
        default=None,
        metavar="PACKAGE|MODEL",
        help="an edge package folder or a registered model name (default: SmolLM2-135M)",
    )
    parser.add_argument("--json", action="store_true", help="print the manifest as JSON")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="re-hash every file and check every path and graph, as a first "
        "load does (exit code 2 and the reason when the package is bad)",
    )


def _quantization(quant: QuantizationInfo) -> str:
    """ "int4 (210 tensors quantized from Q4_1, 1 repacked Q8_0 losslessly)" or "none"."""
    if quant.scheme == "fp32":
        return "none"
    origins = Counter(str(t.get("from", "?")) for t in quant.tensors.values())
    detail = ", ".join(f"{n} {how}" for how, n in origins.most_common())
    return f"{quant.scheme} ({detail})"


def main(args: argparse.Namespace) -> int:
    from edge.format import manifest_to_json
    from edge.package import open_package
    from edge.resolve import resolve_package

    root = resolve_package(args.package)
    # The same checks as loading: paths inside the package, sizes, graphs; --verify hashes.
    package = open_package(root, verify="full" if args.verify else "sizes")
    manifest = package.manifest
    package.close()
    if args.json:
        print(manifest_to_json(manifest), end="")
        return 0
    spec = manifest.spec
    size = sum(f.size for f in manifest.files)
    print(f"package       {root}")
    print(
        f"architecture  {spec.architecture}: {spec.num_layers} layers, hidden "
        f"{spec.hidden_size}, {spec.num_heads} heads / {spec.num_kv_heads} kv, ffn "
        f"{spec.intermediate_size}, vocab {spec.vocab_size}"
    )
    print(f"context       {spec.max_position_embeddings} tokens, rope theta {spec.rope_theta:g}")
    print(
        f"weights       {size / 2**20:.1f} MiB in {len(manifest.files)} files; "
        f"quantization: {_quantization(manifest.quant)}"
    )
    print(
        f"parts         {len(manifest.parts)} ({', '.join(p.name for p in manifest.parts[:3])}"
        f", ..., {manifest.parts[-1].name})"
    )
    print(
        f"tokenizer     eos ids {list(manifest.tokenizer.eos_token_ids)}, chat template: "
        f"{'yes' if manifest.tokenizer.chat_template else 'no'}"
    )
    print(
        f"exported by   edge {manifest.exporter.get('edge_version')} from "
        f"{json.dumps(manifest.exporter.get('source'))}"
    )
    if args.verify:
        print(f"verified      {len(manifest.files)} files: sha256, sizes, paths and graphs ok")
    return 0
