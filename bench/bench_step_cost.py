"""What a step of S tokens costs against a step of one, per package, in one run.

    python bench/bench_step_cost.py PKG [PKG ...] [--threads 2] [--repeats 7]

This decides how cheap speculative verification (and prompts) can be: int4 `MatMulNBits`
grows with S, w8a8's `MatMulIntegerToFloat` reads the weights once per step. Each package:
a 200-token context, then passes over S = 1, 2, 4, 8, 12, 16 random tokens, rewound after
each, repeated; medians after dropping the first two repeats (warm-up). Packages run one after
the other (measure them in one process and compare ratios: the machine is shared).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from edge.engine import Engine, EngineConfig
from edge.package import open_package
from edge.resolve import resolve_package

SIZES = (1, 2, 4, 8, 12, 16)
CONTEXT = 200


def step_costs(engine: Engine, repeats: int, rng: np.random.Generator) -> dict[int, float]:
    """Median seconds of one pass over S tokens after the context, per S."""
    engine.reset()
    engine.prefill(rng.integers(100, 20000, CONTEXT))
    seconds: dict[int, list[float]] = {s: [] for s in SIZES}
    for _ in range(repeats):
        for size in SIZES:
            ids = rng.integers(100, 20000, size)
            engine.rewind(CONTEXT)
            engine.verify(ids[:1])  # wakes the thread pool, as a decode loop keeps it awake
            engine.rewind(CONTEXT)
            start = time.perf_counter()
            engine.verify(ids)
            seconds[size].append(time.perf_counter() - start)
    return {s: statistics.median(v[2:]) for s, v in seconds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("packages", nargs="+", metavar="PKG")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"{args.threads} threads; a pass over S tokens / one step\n")
    print("| package | one step (ms) | " + " | ".join(f"S={s}" for s in SIZES[1:]) + " |")
    print("|---|---|" + "---|" * (len(SIZES) - 1))
    for name in args.packages:
        engine = Engine(
            open_package(resolve_package(name)),
            EngineConfig(threads=args.threads, max_context=1024),
        )
        costs = step_costs(engine, args.repeats, rng)
        one = costs[1]
        print(
            f"| {name} | {one * 1e3:.1f} | "
            + " | ".join(f"{costs[s] / one:.2f}" for s in SIZES[1:])
            + " |",
            flush=True,
        )
        del engine


if __name__ == "__main__":
    main()
