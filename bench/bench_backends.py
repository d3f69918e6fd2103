"""Per-backend, per-part latency: ONNX Runtime CPU vs OpenVINO CPU on SmolLM2 fp32 and int4.

    python bench/bench_backends.py [--threads 2] [--repeats 50]

Each part (the embedding, one block, the head) is compiled alone on each backend through the
`devices` Backend API, exactly as the engine runs a one-part segment (buffers bound once, KV
cache written in place by ONNX Runtime, copied in by OpenVINO), and timed for a decode step
(1 token, 64 already in the cache) and a 64-token prefill step (the head computes the last
position's logits only). A last row times a whole decode step through the engine with every
part on one backend. Medians over `--repeats` runs; backends alternate so machine noise hits
both alike. The int4 package is made from the fp32 one (`edge quantize --quant int4`) when
`--int4` is not given. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devices import registry
from devices.backend import Resident, SegmentGraph
from edge import format as fmt
from edge.package import Package, open_package
from edge.rope import rope_tables

BACKENDS = ("ort_cpu", "openvino")
PREFILL, CONTEXT, MAX_CONTEXT = 64, 64, 256


class PartBench:
    """One part compiled and loaded on one backend, its buffers bound for one step shape."""

    def __init__(
        self, package: Package, index: int, backend: str, threads: int, tokens: int, position: int
    ) -> None:
        spec, part = package.spec, package.manifest.parts[index]
        self.backend = registry.create(backend, {"threads": threads})
        graph = SegmentGraph(package, index, (part,), package.graph_bytes(part))
        keys = [
            np.zeros((1, spec.num_kv_heads, MAX_CONTEXT, spec.head_dim), np.float32)
            for _ in range(spec.num_layers)
        ]
        values = [k.copy() for k in keys]
        self.resident = Resident(keys, values, *rope_tables(spec, MAX_CONTEXT))
        self.loaded = self.backend.load(self.backend.compile(graph), self.resident)
        self.position, self.tokens = position, tokens
        rng = np.random.default_rng(index)
        inputs = {
            fmt.SEQLENS_K: np.array([position + tokens - 1], np.int32),
            fmt.TOTAL_SEQUENCE_LENGTH: np.array(position + tokens, np.int32),
        }
        outputs = {}
        if part.kind == "embed":
            inputs[fmt.INPUT_IDS] = rng.integers(0, spec.vocab_size, (1, tokens))
        else:
            name = next(n for n in part.inputs if n.startswith("hidden."))
            inputs[name] = rng.standard_normal((1, tokens, spec.hidden_size), np.float32)
        if part.kind == "head":
            inputs[fmt.LOGITS_INDEX] = np.array([tokens - 1], np.int64)
            outputs[fmt.LOGITS] = np.zeros((1, 1, spec.vocab_size), np.float32)
        else:
            name = next(n for n in part.outputs if n.startswith("hidden."))
            outputs[name] = np.zeros((1, tokens, spec.hidden_size), np.float32)
        executable = self.loaded.executable
        self.buffers = ({k: v for k, v in inputs.items() if k in executable.inputs}, outputs)
        self.backend.bind(self.loaded, *self.buffers)

    def time_once(self) -> float:
        start = time.perf_counter()
        self.backend.run(self.loaded, self.position, self.tokens)
        return time.perf_counter() - start


def engine_decode_ms(package: Package, backend: str, threads: int, repeats: int) -> float:
    from edge.engine import Engine, EngineConfig
    from edge.placement import Placement

    placement = Placement.single(len(package.manifest.parts), backend)
    engine = Engine(
        package, EngineConfig(max_context=MAX_CONTEXT, threads=threads, placement=placement)
    )
    engine.prefill(list(range(100, 100 + CONTEXT)))
    times = []
    for i in range(repeats):
        engine.rewind(CONTEXT)
        start = time.perf_counter()
        engine.decode(200 + i)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def bench_package(label: str, package: Package, threads: int, repeats: int) -> list[str]:
    parts = {"embed": 0, "block": 1, "head": len(package.manifest.parts) - 1}
    rows = []
    for part, index in parts.items():
        for step, tokens, position in (("decode", 1, CONTEXT), (f"prefill {PREFILL}", PREFILL, 0)):
            benches = {b: PartBench(package, index, b, threads, tokens, position) for b in BACKENDS}
            for bench in benches.values():
                for _ in range(5):
                    bench.time_once()
            times: dict[str, list[float]] = {b: [] for b in BACKENDS}
            for _ in range(repeats):
                for name, bench in benches.items():
                    times[name].append(bench.time_once())
            ms = {b: statistics.median(t) * 1e3 for b, t in times.items()}
            rows.append(_row(label, part, step, ms))
    ms = {b: engine_decode_ms(package, b, threads, repeats) for b in BACKENDS}
    rows.append(_row(label, "whole model (engine)", "decode", ms))
    return rows


def _row(label: str, part: str, step: str, ms: dict[str, float]) -> str:
    return (
        f"| {label} | {part} | {step} | {ms['ort_cpu']:.3f} | {ms['openvino']:.3f} | "
        f"{ms['openvino'] / ms['ort_cpu']:.2f}x |"
    )


def int4_package(fp32: Path, work: Path) -> Path:
    target = work / "smollm2-int4"
    if not (target / fmt.MANIFEST_FILE).is_file():
        from exporters.export import ExportConfig, quantize_package

        quantize_package(fp32, target, ExportConfig(quant="int4"), progress=False)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fp32", default=str(Path.home() / ".cache/edge/packages/smollm2-135m"))
    parser.add_argument("--int4", default=None, help="an int4 package (made when not given)")
    parser.add_argument("--work", default=str(Path.home() / ".cache" / "edge" / "bench"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    available = registry.create("openvino").is_available()
    if not available:
        raise SystemExit(f"OpenVINO is needed for this comparison: {available.reason}")
    fp32 = Path(args.fp32)
    int4 = Path(args.int4) if args.int4 else int4_package(fp32, Path(args.work))
    print(
        f"{args.threads} threads, medians of {args.repeats} runs; decode = 1 token with "
        f"{CONTEXT} in the cache\n"
    )
    print("| model | part | step | ort_cpu ms | openvino ms | openvino / ort |")
    print("|---|---|---|---|---|---|")
    for label, path in (("fp32", fp32), ("int4", int4)):
        for row in bench_package(
            label, open_package(path, verify="sizes"), args.threads, args.repeats
        ):
            print(row, flush=True)


if __name__ == "__main__":
    main()
