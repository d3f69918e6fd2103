"""Decode with edge's JIT int4 kernel on the resident path, next to ONNX Runtime, warm.

    python bench/bench_resident_jit.py PACKAGE [--rounds 3] [--tokens 48] [--threads 2]

The kernel alone reads int4 weights faster than ONNX Runtime's `MatMulNBits` on AVX-512 VNNI
CPUs (`bench/bench_gemv.py`). The question here is whether that survives a whole decode step:
the `streamed` backend with a budget that pins every block is a resident engine running the
numpy forward over that kernel, so both engines are loaded once, warmed up, and then timed in
alternation on the same token ids, greedy; the tokens of both are compared.
"""

from __future__ import annotations

import argparse
import statistics
import time

from edge.engine import Engine, EngineConfig
from edge.package import open_package
from edge.runner import Runner
from edge.streaming.config import StreamConfig, streamed_state

EVERYTHING = "1TB"  # a budget no package reaches: every block pinned


def decode(engine: Runner, ids: list[int], steps: int) -> tuple[float, list[int]]:
    engine.reset()
    token = int(engine.prefill(ids)[-1].argmax())
    out = [token]
    start = time.perf_counter()
    for _ in range(steps):
        token = int(engine.decode(token).argmax())
        out.append(token)
    return steps / (time.perf_counter() - start), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    package = open_package(args.package, verify="sizes")
    parts = len(package.manifest.parts)
    engines: dict[str, Runner] = {
        "ONNX Runtime": Engine(package, EngineConfig(max_context=512, threads=args.threads)),
        "JIT kernel, all pinned": Engine(
            package,
            StreamConfig(
                EVERYTHING, max_context=512, threads=args.threads, direct=False
            ).engine_config(parts),
            progress=False,
        ),
    }
    state = streamed_state(engines["JIT kernel, all pinned"])
    assert state is not None and not state.plan.policy.streamed, "every block must be pinned"
    ids = [(7 * i + 100) % package.spec.vocab_size for i in range(32)]
    for engine in engines.values():
        decode(engine, ids, 8)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in engines}
    tokens: dict[str, list[int]] = {}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            rate, tokens[name] = decode(engine, ids, args.tokens)
            rates[name].append(rate)
    base = statistics.median(rates["ONNX Runtime"])
    print(f"{package.root.name}: {args.tokens} greedy tokens, {args.threads} threads")
    print("| engine | decode tok/s (median) | runs | vs ONNX Runtime |")
    print("|---|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        runs = ", ".join(f"{v:.1f}" for v in values)
        print(f"| {name} | {median:.1f} | {runs} | {median / base:.2f}x |")
    same = tokens["ONNX Runtime"] == tokens["JIT kernel, all pinned"]
    print(f"greedy tokens identical: {same}")


if __name__ == "__main__":
    main()
