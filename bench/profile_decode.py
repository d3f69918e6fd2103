"""Where a decoded token's time goes: ONNX Runtime's own profile of warm decode steps, grouped
by what each node does, beside the Python-side time of the step and the bytes each group reads.

    python bench/profile_decode.py PACKAGE [PACKAGE ...] --threads 2 --tokens 64

The package is loaded as `edge run` loads it, with ONNX Runtime's profiler switched on in its
sessions. A prompt is prefilled, a few decode steps warm up, then `--tokens` greedy steps are
timed (argmax in the loop). The profiler records every kernel's run time; only the timed
steps' kernels are kept (matched by time to their `model_run` events). For each group of
nodes the table gives the time per token, its share, the bytes its weights occupy and the
rate it reads them at (bytes ÷ time): the matrix products should run near the memory
bandwidth, and whatever runs far below it is where the time is lost. "outside kernels" is the
step's wall time minus the kernel time (ONNX Runtime's executor, IOBinding, Python, argmax).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PROMPT = (
    "The interpreter reads the program text, splits it into tokens, and builds a tree that "
    "the compiler turns into bytecode for the virtual machine to run one instruction at a time."
)
WARMUP_STEPS = 8


@dataclass
class Group:
    """Kernel time and weight bytes of one kind of node, summed over the timed steps."""

    micros: float = 0.0
    nodes: set[str] = field(default_factory=set)
    weight_bytes: int = 0


def node_group(name: str, op: str, weights: dict[str, tuple[str, int]]) -> str:
    """A readable group: the matrix a MatMul reads (qkv, o, gate_up, down, head), or the op."""
    part = name.split("/", 1)[0]
    if part == "embed":
        return "embedding lookup"
    if op.startswith("MatMul"):
        if part == "head":
            return "head matmul"
        tensor = weights.get(name, ("", 0))[0]
        matrix = tensor.split(".")[2] if tensor.count(".") >= 2 else op
        return f"block matmul {matrix}"
    if "Attention" in op:
        return "attention"
    if "LayerNormalization" in op:
        return "norms"
    return op


def weight_table(package: Path) -> dict[str, tuple[str, int]]:
    """Node name -> (its weight tensor's name, the bytes of every initializer it reads)."""
    import onnx

    manifest = json.loads((package / "manifest.json").read_text())
    sizes = {}
    for part in manifest["parts"]:
        for tensor in part.get("tensors", []):
            sizes[tensor["name"]] = int(tensor["nbytes"])
    out: dict[str, tuple[str, int]] = {}
    for graph in sorted(package.glob("*.onnx")):
        model = onnx.load(str(graph), load_external_data=False)
        for node in model.graph.node:
            used = [i for i in node.input if i in sizes]
            if used:
                out[node.name] = (used[0], sum(sizes[i] for i in used))
    return out


def profile(package: Path, threads: int, tokens: int) -> None:
    import edge
    from devices.backends import ort_cpu

    folder = Path(tempfile.mkdtemp(prefix="edge-profile-"))
    original = ort_cpu.OrtCpuBackend.session_options

    def profiled(self, graph):  # the sessions edge builds, with the profiler on
        options = original(self, graph)
        options.enable_profiling = True
        options.profile_file_prefix = str(folder / "ort")
        return options

    ort_cpu.OrtCpuBackend.session_options = profiled
    try:
        model = edge.load(str(package), threads=threads)
    finally:
        ort_cpu.OrtCpuBackend.session_options = original
    engine = model.engine
    ids = model.tokenizer.encode(PROMPT)
    logits = engine.prefill(ids)[-1]
    token = int(np.argmax(logits))
    for _ in range(WARMUP_STEPS):
        token = int(np.argmax(engine.decode(token)))
    wall = []
    for _ in range(tokens):
        started = time.perf_counter()
        token = int(np.argmax(engine.decode(token)))
        wall.append(time.perf_counter() - started)
    files = [Path(loaded.session.end_profiling()) for loaded in engine.loaded_segments()]
    engine.close()
    groups, runs = kernel_groups(files, weight_table(package), tokens)
    report(package, threads, tokens, wall, groups, runs)


def kernel_groups(
    files: list[Path], weights: dict[str, tuple[str, int]], tokens: int
) -> tuple[dict[str, Group], int]:
    """Group the last `tokens` model runs' kernel times of every session's profile."""
    groups: dict[str, Group] = defaultdict(Group)
    runs_seen = 0
    for file in files:
        events = json.loads(file.read_text())
        runs = sorted(
            (e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
            key=lambda e: e["ts"],
        )[-tokens:]
        runs_seen = max(runs_seen, len(runs))
        windows = [(r["ts"], r["ts"] + r["dur"]) for r in runs]
        start = windows[0][0] if windows else 0
        for event in events:
            if event.get("cat") != "Node" or not event["name"].endswith("_kernel_time"):
                continue
            if event["ts"] < start or not any(a <= event["ts"] <= b for a, b in windows):
                continue
            name = event["name"].removesuffix("_kernel_time")
            op = event.get("args", {}).get("op_name", "?")
            group = groups[node_group(name, op, weights)]
            group.micros += event["dur"]
            if name not in group.nodes:
                group.nodes.add(name)
                if not name.startswith("embed/"):  # a lookup reads one row, not the table
                    group.weight_bytes += weights.get(name, ("", 0))[1]
        file.unlink()
    return groups, runs_seen


def report(
    package: Path,
    threads: int,
    tokens: int,
    wall: list[float],
    groups: dict[str, Group],
    runs: int,
) -> None:
    step_ms = statistics.median(wall) * 1e3
    mean_ms = statistics.fmean(wall) * 1e3
    kernel_ms = sum(g.micros for g in groups.values()) / 1e3 / tokens
    print(f"\n{package.name}: {threads} threads, {tokens} decode steps ({runs} runs profiled)")
    print(f"step: median {step_ms:.2f} ms ({1e3 / step_ms:.1f} tok/s), mean {mean_ms:.2f} ms")
    print("| group | nodes | ms / token | share | weight MB | read GB/s |")
    print("|---|---|---|---|---|---|")
    for name, group in sorted(groups.items(), key=lambda kv: -kv[1].micros):
        ms = group.micros / 1e3 / tokens
        mb = group.weight_bytes / 1e6
        rate = f"{group.weight_bytes / (ms * 1e-3) / 1e9:.1f}" if group.weight_bytes else ""
        print(
            f"| {name} | {len(group.nodes)} | {ms:.3f} | {ms / mean_ms:.0%} | {mb:.1f} | {rate} |"
        )
    outside = mean_ms - kernel_ms
    print(f"| outside kernels | | {outside:.3f} | {outside / mean_ms:.0%} | | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="+", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()
    for package in args.packages:
        profile(package, args.threads, args.tokens)


if __name__ == "__main__":
    main()
