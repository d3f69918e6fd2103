"""Perplexity of edge's quantization schemes next to llama.cpp's, same text, same tokens.

    python bench/bench_ppl.py --llama-python /path/to/llama-venv/bin/python [--model NAME]

Text: CPython's `pydoc_data.topics` (the first --tokens tokens), cut into non-overlapping
windows of --window tokens, each scored from an empty cache by both engines (so the numbers
are directly comparable; edge's own `edge eval ppl` uses overlapping windows and gives lower
values). llama.cpp's perplexity is computed here from its logits, on the same token ids.
Every window starts with the tokenizer's leading tokens (Gemma's `<bos>`, its attention sink;
none for SmolLM2 and Qwen), unscored, in both engines.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def llama_ppl(python: str, gguf: Path, windows: list[list[int]], threads: int) -> float:
    out = subprocess.run(
        [
            python,
            str(HERE / "llama_cpp_runner.py"),
            str(gguf),
            "--logits",
            "--threads",
            str(threads),
        ],
        input=json.dumps(windows),
        capture_output=True,
        text=True,
        check=True,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return math.exp(row["nll_sum"] / row["tokens"])


def llama_quantize(python: str, source: Path, target: Path, ftype: str) -> Path:
    if not target.exists():
        script = (
            "import ctypes, sys, llama_cpp as L\n"
            "p = L.llama_model_quantize_default_params()\n"
            f"p.ftype = L.{ftype}; p.allow_requantize = True\n"
            "sys.exit(L.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(),"
            " ctypes.byref(p)))\n"
        )
        subprocess.run(
            [python, "-c", script, str(source), str(target)], check=True, capture_output=True
        )
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llama-python", required=True)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--window", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "edge" / "bench"))
    parser.add_argument(
        "--variants", default=None, help="edge variants to export, comma-separated (default: all)"
    )
    args = parser.parse_args()

    import edge
    from edge.evaluate import PerplexityConfig, default_corpus, lead_ids, perplexity
    from edge.models.pull import pull
    from exporters.export import ExportConfig, export

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    gguf = pull(args.model, progress=False)
    variants = {
        "fp32": ExportConfig(),
        "int8": ExportConfig(quant="int8"),
        "int4 (RTN)": ExportConfig(quant="int4"),
        "int4 (AWQ)": ExportConfig(quant="int4", method="awq"),
        "int4 (AWQ block 64)": ExportConfig(quant="int4", method="awq", block_size=64),
        "int4 (AWQ block 128)": ExportConfig(quant="int4", method="awq", block_size=128),
        "int4 asymmetric (AWQ)": ExportConfig(quant="int4", method="awq", symmetric=False),
        "int4 asymmetric (AWQ block 64)": ExportConfig(
            quant="int4", method="awq", symmetric=False, block_size=64
        ),
        "int4-mixed": ExportConfig(quant="int4-mixed"),
        "w8a8": ExportConfig(quant="w8a8"),
    }
    if args.variants:
        wanted = {v.strip() for v in args.variants.split(",")}
        variants = {k: v for k, v in variants.items() if k in wanted or k == "fp32"}
    config = PerplexityConfig(window=args.window, stride=args.window, max_tokens=args.tokens)
    rows, ids = [], None
    for label, export_config in variants.items():
        tag = label.replace(" ", "").replace("(", "-").replace(")", "")
        target = work / f"{gguf.stem}-{tag}"
        if not (target / "manifest.json").exists():
            export(gguf, target, export_config, overwrite=True, progress=False)
        model = edge.load(target, threads=args.threads, progress=False)
        if ids is None:
            ids = model.tokenizer.encode(default_corpus(), add_special_tokens=False)
            ids = ids[: args.tokens]
            lead = lead_ids(model.tokenizer)
        result = perplexity(model.engine, ids, config, lead=lead)
        rows.append((f"edge {label}", result.perplexity))
        del model
    windows = [[*lead, *ids[i : i + args.window]] for i in range(0, len(ids), args.window)]
    f32 = llama_quantize(
        args.llama_python, gguf, work / f"{gguf.stem}.F32.gguf", "LLAMA_FTYPE_ALL_F32"
    )
    q4_0 = llama_quantize(
        args.llama_python, gguf, work / f"{gguf.stem}.Q4_0.gguf", "LLAMA_FTYPE_MOSTLY_Q4_0"
    )
    kind = gguf.stem.rsplit(".", 1)[-1].split("-")[-1].upper()  # Q4_1, Q4_K_M
    for label, path in (
        (f"llama.cpp {kind} (as shipped)", gguf),
        ("llama.cpp F32", f32),
        ("llama.cpp Q4_0", q4_0),
    ):
        rows.append((label, llama_ppl(args.llama_python, path, windows, args.threads)))
    base = {"edge": rows[0][1], "llama.cpp": rows[-2][1]}
    print(
        f"{args.model}: perplexity on the first {len(ids)} tokens of pydoc_data.topics, "
        f"windows of {args.window}"
    )
    print("| engine / weights | perplexity | vs its own fp32 |")
    print("|---|---|---|")
    for label, ppl in rows:
        ref = base["edge"] if label.startswith("edge") else base["llama.cpp"]
        print(f"| {label} | {ppl:.3f} | {100 * (ppl / ref - 1):+.1f}% |")


if __name__ == "__main__":
    main()
