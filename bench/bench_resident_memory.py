"""Resident memory of edge's packages next to llama.cpp on the same GGUF: peak and steady RSS.

    python bench/bench_resident_memory.py PKG [PKG ...] [--gguf FILE ...] \
        [--llama-python VENV/bin/python] [--ctx 512] [--tokens 32]

Every row is a fresh process (peak RSS is that process's VmHWM) that loads the model with a
`--ctx`-token cache, runs a 32-token prompt and decodes `--tokens` greedy tokens, then reads
/proc/self/status. Each edge package runs three ways:

- heap: ONNX Runtime packs the weights on its heap at load (`prepacked_cache="off"`);
- first load: the packed weights are stored in a fresh edge cache, then mapped ("build");
- mapped: every later load maps the stored packing ("build" with the store there).

The bound the memory issue sets is package size × 1.1 + KV cache + runtime, the runtime being
what a process holds after importing edge and onnxruntime and loading the tokenizer (measured
in its own process). llama.cpp (llama-cpp-python in its own environment, `--llama-python`)
loads each `--gguf` memory-mapped, its default, with the same context and thread count.
Greedy tokens of the three edge runs must agree (printed). Beside each edge row, the peak the
planner predicts for it (`edge plan`: the plan's peak for the heap, `Plan.stored_packing` for
the other two) and its error. Markdown tables go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20
PROMPT = "def quicksort(items):\n    "

STATUS = """
def status():
    out = {}
    for line in open("/proc/self/status"):
        key, value = line.split(":", 1)
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) * 1024
    return out
"""

EDGE_CHILD = (
    STATUS
    + """
import json, sys, time
job = json.loads(sys.argv[1])
sys.path.insert(0, job["repo"])
started = time.perf_counter()
import numpy as np
from edge.engine import EngineConfig
from edge.model import Model
from edge.package import open_package
if job["mode"] == "runtime":
    from edge.tokenizer import Tokenizer
    import onnxruntime  # noqa: F401  (the resident engine's runtime)
    Tokenizer.from_package(open_package(job["package"]))
    print(json.dumps(status()))
    raise SystemExit
config = EngineConfig(max_context=job["ctx"], threads=2, prepacked_cache=job["mode"])
model = Model(open_package(job["package"]), config, progress=False)
load_s = time.perf_counter() - started
ids = model.tokenizer.encode(job["prompt"], add_special_tokens=False)[:32]
engine = model.engine
logits = engine.prefill(ids)
tokens = []
for _ in range(job["tokens"]):
    tokens.append(int(np.argmax(logits[-1] if logits.ndim > 1 else logits)))
    logits = engine.decode(tokens[-1])
print(json.dumps({**status(), "load_s": load_s, "tokens": tokens}))
"""
)

LLAMA_CHILD = (
    STATUS
    + """
import json, sys, time
import numpy as np
job = json.loads(sys.argv[1])
started = time.perf_counter()
from llama_cpp import Llama
llm = Llama(model_path=job["gguf"], n_ctx=job["ctx"], n_threads=2, n_batch=512, verbose=False)
load_s = time.perf_counter() - started
ids = llm.tokenize(job["prompt"].encode(), add_bos=False)[:32]
llm.eval(ids)
for _ in range(job["tokens"]):  # the newest logits, in place (scores holds them only with
    # logits_all): greedy tokens, as the edge runs decode
    logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
    llm.eval([int(np.argmax(logits))])
print(json.dumps({**status(), "load_s": load_s}))
"""
)


def child(python: str, code: str, job: dict, env: dict[str, str] | None = None) -> dict:
    done = subprocess.run(
        [python, "-c", code, json.dumps(job)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=1800,
    )
    if done.returncode != 0:
        raise SystemExit(f"child failed ({job}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def package_bytes(package: Path) -> int:
    manifest = json.loads((package / "manifest.json").read_text())
    return sum(f["size"] for f in manifest["files"])


def kv_bytes(package: Path, ctx: int) -> int:
    spec = json.loads((package / "manifest.json").read_text())["spec"]
    head_dim = spec.get("head_dim") or spec["hidden_size"] // spec["num_heads"]
    return 2 * spec["num_layers"] * spec["num_kv_heads"] * head_dim * ctx * 4


def cpu_line() -> str:
    flags: list[str] = []
    model = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and not flags:
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    shown = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "avx_vnni")]
    return f"{model} [{' '.join(shown)}], {os.cpu_count()} CPUs"


def predicted_peaks(package: Path, ctx: int, tokens: int) -> dict[str, int]:
    """The planner's peak for each edge run, planned for this machine as `edge plan` does."""
    from edge.engine_config import EngineConfig
    from edge.planner import PlanConfig
    from edge.planner.machine import plan_model

    chunk = EngineConfig().prefill_chunk
    config = PlanConfig(
        max_context=ctx, prompt_tokens=32, prefill_chunk=chunk, context_tokens=32 + tokens
    )
    plan = plan_model(package, config=config)
    stored = plan.stored_packing
    assert stored is not None, "the plan runs nothing on ONNX Runtime's CPU backend"
    return {
        "heap": plan.peak_bytes,
        "first load": stored.first_load_peak_bytes,
        "mapped": stored.mapped_peak_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+", type=Path)
    parser.add_argument("--gguf", action="append", default=[], type=Path)
    parser.add_argument("--llama-python", default=None)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    job = {"repo": str(REPO), "ctx": args.ctx, "tokens": args.tokens, "prompt": PROMPT}

    print(f"{cpu_line()}; context {args.ctx}, 2 threads, {args.tokens} decoded tokens\n")
    print(
        "| model | run | load s | RSS after | of it file-backed | peak (VmHWM) "
        "| planner predicts | bound: package × 1.1 + KV + runtime |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for package in args.packages:
        size, kv = package_bytes(package), kv_bytes(package, args.ctx)
        runtime = child(
            sys.executable, EDGE_CHILD, {**job, "package": str(package), "mode": "runtime"}
        )
        bound = 1.1 * size + kv + runtime["VmHWM"]
        predicted = predicted_peaks(package, args.ctx, args.tokens)
        tokens = {}
        with tempfile.TemporaryDirectory(prefix="edge-bench-cache-") as cache:
            env = {"EDGE_CACHE_DIR": cache}
            for label, mode in (("heap", "off"), ("first load", "build"), ("mapped", "build")):
                row = child(
                    sys.executable, EDGE_CHILD, {**job, "package": str(package), "mode": mode}, env
                )
                tokens[label] = row["tokens"]
                print(
                    f"| {package.name} ({size / MiB:.0f} MiB) | edge, {label} "
                    f"| {row['load_s']:.1f} | {row['VmRSS'] / MiB:.0f} MiB "
                    f"| {row['RssFile'] / MiB:.0f} MiB | {row['VmHWM'] / MiB:.0f} MiB "
                    f"| {predicted[label] / MiB:.0f} MiB "
                    f"({predicted[label] / row['VmHWM'] - 1:+.0%}) | {bound / MiB:.0f} MiB |",
                    flush=True,
                )
        same = len({tuple(t) for t in tokens.values()}) == 1
        agree = "agree" if same else "DIFFER"
        print(f"|  | (greedy tokens of the three runs {agree}) | | | | | | |")
    for gguf in args.gguf:
        if args.llama_python is None:
            raise SystemExit("--gguf needs --llama-python (llama-cpp-python's environment)")
        row = child(args.llama_python, LLAMA_CHILD, {**job, "gguf": str(gguf)})
        print(
            f"| {gguf.name} ({gguf.stat().st_size / MiB:.0f} MiB) | llama.cpp, mapped "
            f"| {row['load_s']:.1f} | {row['VmRSS'] / MiB:.0f} MiB "
            f"| {row['RssFile'] / MiB:.0f} MiB | {row['VmHWM'] / MiB:.0f} MiB | | |",
            flush=True,
        )


if __name__ == "__main__":
    main()
