"""What a step of S tokens costs against a step of one, per package, in one run.

    python bench/bench_step_cost.py PKG [PKG ...] [--threads 2] [--repeats 7]

This decides how cheap speculative verification (and prompts) can be: int4 `MatMulNBits`
grows with S, w8a8's `MatMulIntegerToFloat` reads the weights once per step. Each package:
a 200-token context, then passes over S = 1, 2, 4, 8, 12, 16 random tokens, rewound after
each, repeated; medians after dropping the first two repeats (warm-up). Packages run one after
the other (measure them in one process and compare ratios: the machine is shared).

`--tree` loads each package for token trees (`EngineConfig(tree_verify=True)`), adds S = 32
and 64, and prints a second row: passes over random trees of S nodes (`Engine.verify_tree`)
next to the chains of the first.
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


def step_costs(
    engine: Engine,
    repeats: int,
    rng: np.random.Generator,
    sizes: tuple[int, ...] = SIZES,
    tree: bool = False,
) -> dict[int, float]:
    """Median seconds of one pass over S tokens after the context, per S (a random tree of
    S nodes with `tree`)."""
    engine.reset()
    engine.prefill(rng.integers(100, 20000, CONTEXT))
    seconds: dict[int, list[float]] = {s: [] for s in sizes}
    for _ in range(repeats):
        for size in sizes:
            ids = rng.integers(100, 20000, size)
            engine.rewind(CONTEXT)
            engine.verify(ids[:1])  # wakes the thread pool, as a decode loop keeps it awake
            engine.rewind(CONTEXT)
            parents = [-1, *(int(rng.integers(0, i)) for i in range(1, size))]
            start = time.perf_counter()
            if tree:
                engine.verify_tree(ids, parents)
            else:
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
    parser.add_argument("--tree", action="store_true", help="also passes over token trees")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    sizes = (*SIZES, 32, 64) if args.tree else SIZES
    print(f"{args.threads} threads; a pass over S tokens / one step\n")
    print("| package | one step (ms) | " + " | ".join(f"S={s}" for s in sizes[1:]) + " |")
    print("|---|---|" + "---|" * (len(sizes) - 1))
    for name in args.packages:
        engine = Engine(
            open_package(resolve_package(name)),
            EngineConfig(threads=args.threads, max_context=1024, tree_verify=args.tree),
        )
        costs = step_costs(engine, args.repeats, rng, sizes)
        one = costs[1]
        rows = {name: costs}
        if args.tree:
            rows[f"{name} (trees)"] = step_costs(engine, args.repeats, rng, sizes, tree=True)
        for label, row in rows.items():
            print(
                f"| {label} | {one * 1e3:.1f} | "
                + " | ".join(f"{row[s] / one:.2f}" for s in sizes[1:])
                + " |",
                flush=True,
            )
        del engine


if __name__ == "__main__":
    main()
