"""Quantized decode and prefill: edge vs llama.cpp vs transformers, side by side in one run.

    python bench/bench_quant.py --llama-python /path/to/venv-with-llama-cpp/bin/python

llama.cpp comes from `llama-cpp-python` installed in the benchmark's own virtual environment
(see BENCHMARKS.md for the build flags); it is never an edge dependency. Every engine gets the
same 128 prompt token ids (CPython's documentation) and decodes 128 greedy tokens, 2 threads.
Runs alternate between engines so machine noise hits all alike; medians are printed with the
ratio of each edge row to llama.cpp Q4_0.

The Q4_0 GGUF is made from the shipped Q4_1 file with llama.cpp's own quantizer (as the
anchors were) when it does not exist yet.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_ppl import llama_quantize  # noqa: E402 - a sibling script, not a package


def llama_cpp(python: str, gguf: Path, prompt: list[int], threads: int, gen: int) -> tuple:
    out = subprocess.run(
        [
            python,
            str(HERE / "llama_cpp_runner.py"),
            str(gguf),
            "--threads",
            str(threads),
            "--gen",
            str(gen),
        ],
        input=json.dumps(prompt),
        capture_output=True,
        text=True,
        check=True,
    )
    row = json.loads(out.stdout.strip().splitlines()[-1])
    return row["prefill_tps"], row["decode_tps"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--llama-python", required=True, help="python of a venv where llama-cpp-python is installed"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=128)
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "edge" / "bench"))
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument(
        "--model",
        default="smollm2-135m",
        help="registered model; models other than SmolLM2 compare edge int4 "
        "and int8 with llama.cpp on the GGUF as shipped",
    )
    args = parser.parse_args()

    import edge
    from edge.bench import BenchConfig, bench_engine, bench_prompt
    from edge.models.pull import pull
    from exporters.export import ExportConfig, export

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    shipped = pull(args.model, progress=False)
    kind = shipped.stem.rsplit(".", 1)[-1].split("-")[-1].upper()  # Q4_1, Q4_K_M
    smollm = args.model == "smollm2-135m"
    if smollm:
        q4_0 = llama_quantize(
            args.llama_python,
            shipped,
            work / f"{shipped.stem}.Q4_0.gguf",
            "LLAMA_FTYPE_MOSTLY_Q4_0",
        )
        packages = {
            "edge int4 (Q4_0 repacked)": (q4_0, "int4"),
            "edge int4 (Q4_0 repacked) + int8 prefill": (q4_0, "int4+prefill"),
            f"edge int4 (from {kind})": (shipped, "int4"),
            f"edge int4-mixed (from {kind})": (shipped, "int4-mixed"),
            f"edge int8 (from {kind})": (shipped, "int8"),
        }
    else:
        packages = {
            f"edge int4 (from {kind})": (shipped, "int4"),
            f"edge int4 (from {kind}) + int8 prefill": (shipped, "int4+prefill"),
            f"edge int8 (from {kind})": (shipped, "int8"),
        }
    models = {}
    for label, (gguf, scheme) in packages.items():
        target = work / f"{gguf.stem}-{scheme}"
        if not (target / "manifest.json").exists():
            quant, _, extra = scheme.partition("+")
            export(
                gguf,
                target,
                ExportConfig(quant=quant, prefill_int8=extra == "prefill"),
                overwrite=True,
                progress=False,
            )
        models[label] = edge.load(target, threads=args.threads, progress=False)
    prompt = bench_prompt(next(iter(models.values())).tokenizer, args.prompt_tokens)
    one = BenchConfig(args.prompt_tokens, args.gen_tokens, runs=1, warmup=0)
    rows: dict[str, list[tuple[float, float]]] = {}
    engines = {
        label: (lambda m=m: _edge(bench_engine, m, prompt, one)) for label, m in models.items()
    }
    if smollm:
        engines["llama.cpp Q4_0"] = lambda: llama_cpp(
            args.llama_python, q4_0, prompt, args.threads, args.gen_tokens
        )
    engines[f"llama.cpp {kind}"] = lambda: llama_cpp(
        args.llama_python, shipped, prompt, args.threads, args.gen_tokens
    )
    if not args.no_transformers:
        import torch
        from bench_fp32 import bench_transformers

        torch.set_num_threads(args.threads)
        engines["transformers fp32"] = lambda: bench_transformers(shipped, prompt, args.gen_tokens)
    for fn in engines.values():  # warm-up
        fn()
    for _ in range(args.runs):
        for label, fn in engines.items():
            rows.setdefault(label, []).append(fn())
    medians = {
        k: (statistics.median(p for p, _ in v), statistics.median(d for _, d in v))
        for k, v in rows.items()
    }
    reference = "llama.cpp Q4_0" if smollm else f"llama.cpp {kind}"
    base = medians[reference]
    print(
        f"{args.model}, {args.threads} threads, {args.prompt_tokens}-token prompt, "
        f"{args.gen_tokens} decoded tokens, median of {args.runs} alternating runs"
    )
    print(
        f"| engine | prefill tok/s | decode tok/s | prefill vs {reference} | "
        f"decode vs {reference} |"
    )
    print("|---|---|---|---|---|")
    for label, (p, d) in medians.items():
        print(f"| {label} | {p:.0f} | {d:.1f} | {p / base[0]:.2f}x | {d / base[1]:.2f}x |")


def _edge(bench_engine, model, prompt, one) -> tuple[float, float]:
    result = bench_engine(model.engine, prompt, one)
    return result.prefill_tps[0], result.decode_tps[0]


if __name__ == "__main__":
    main()
