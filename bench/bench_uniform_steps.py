"""What exactness costs: plain greedy decoding with and without `EngineConfig.uniform_steps`
(`--exact`: every step at least two tokens, so int4 speculation equals plain decoding bit for
bit), both engines loaded once and warmed, runs alternated, on the same prompt.

    python bench/bench_uniform_steps.py PACKAGE [PACKAGE ...] --tokens 64 --rounds 5

Also checks what the option is for: the largest logit difference between feeding the tokens
one at a time and in verification passes of 4, with and without it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from bench.bench_decode import cpu_flags  # noqa: E402
from edge.engine import Engine, EngineConfig  # noqa: E402
from edge.package import open_package  # noqa: E402


def decode_rate(engine: Engine, prompt: list[int], tokens: int) -> float:
    engine.reset()
    token = int(engine.prefill(prompt)[0].argmax())
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(engine.decode(token).argmax())
    return tokens / (time.perf_counter() - start)


def plain_and_verified(engine: Engine, ids: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits of ids[8:] fed one token at a time, and in passes of k (as verification)."""
    engine.reset()
    engine.prefill(ids[:8])
    plain = np.stack([engine.decode(t).copy() for t in ids[8:]])
    engine.reset()
    engine.prefill(ids[:8])
    verified = np.concatenate([engine.verify(ids[i : i + k]) for i in range(8, len(ids), k)])
    return plain, verified


def largest_difference(engine: Engine, ids: list[int], k: int = 4) -> float:
    plain, verified = plain_and_verified(engine, ids, k)
    return float(np.abs(plain - verified).max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("packages", type=Path, nargs="+")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    name, flags = cpu_flags(Path("/proc/cpuinfo").read_text())
    print(f"CPU: {name}; flags: {' '.join(flags)}; {args.threads} threads")
    print("| package | plain tok/s | --exact tok/s | ratio | max logit diff | with --exact |")
    print("|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for package in args.packages:
        engines = {
            uniform: Engine(
                open_package(package),
                EngineConfig(threads=args.threads, max_context=1024, uniform_steps=uniform),
                progress=False,
            )
            for uniform in (False, True)
        }
        vocab = engines[False].spec.vocab_size
        prompt = [int(t) for t in rng.integers(100, min(vocab, 20000), 64)]
        rates: dict[bool, list[float]] = {False: [], True: []}
        for engine in engines.values():  # warm-up
            decode_rate(engine, prompt, 8)
        for _ in range(args.rounds):
            for uniform, engine in engines.items():
                rates[uniform].append(decode_rate(engine, prompt, args.tokens))
        plain, exact = (statistics.median(rates[u]) for u in (False, True))
        diffs = [largest_difference(engines[u], prompt[:40]) for u in (False, True)]
        print(
            f"| {package.name} | {plain:.1f} | {exact:.1f} | {exact / plain:.2f}x "
            f"| {diffs[0]:.3g} | {diffs[1]:.3g} |"
        )
        for engine in engines.values():
            engine.close()


if __name__ == "__main__":
    main()
