"""Disk-streamed weights under memory budgets, against the disk-bound ceiling of the same run.

    python bench/bench_stream.py /work/pkgs/qwen2.5-coder-1.5b-int4 --fractions 0.5 0.75 1.0

Each budget (a fraction of the package's weight bytes; raised to the engine's minimum when
below it, and said so) runs in its own process: load with `memory_budget`, prefill 32 tokens,
decode `--tokens` greedy tokens; the process reports peak RSS, and the engine per-token wall
time, I/O wait, bytes read and read time. The ceilings, measured in the same run:
- disk bound: cold sequential O_DIRECT read throughput of the streamed blocks (WeightStore),
  divided into the bytes each token must read;
- compute bound: the same engine with every part resident (no reads).
Efficiency = tokens/s over min(disk bound, compute bound). The 50%-budget run's read/compute
timeline is written next to the table (--timeline).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

CHILD = r"""
import json, sys, time
import numpy as np
import edge
from edge.streaming import streamed_state
from edge.streaming.report import plot_timeline, summarize
path, budget, tokens, plot = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
model = edge.load(path, memory_budget=budget, max_context=512, progress=False)
engine = model.engine
logits = engine.prefill(list(range(1000, 1032)))[0]
for _ in range(tokens):
    logits = engine.decode(int(np.argmax(logits)))
state = streamed_state(engine)
events = state.prefetcher.events() if state.prefetcher else ()
s = summarize(state, events)
if plot != "-" and events:
    name = path.rstrip("/").split("/")[-1]
    plot_timeline(events, plot, title=f"{name}, budget {budget >> 20} MiB")
print(json.dumps({"tok_s": s.tokens_per_second, "io_wait": s.io_wait_per_token,
                  "compute": s.compute_per_token, "bytes": s.bytes_per_token,
                  "read_s": s.read_seconds_per_token, "overlap": s.overlap,
                  "window": state.plan.policy.window, "streamed": len(state.plan.policy.streamed),
                  "peak_rss": 1024 * int(next(line.split()[1] for line in open("/proc/self/status")
                                              if line.startswith("VmHWM:")))}))
"""


def drop_caches() -> bool:
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def disk_throughput(package: Path) -> float:
    """Cold O_DIRECT sequential read of every block, bytes per second."""
    from edge.format import read_manifest
    from memory_sched.store import WeightStore, allocate_buffer

    blocks = read_manifest(package).blocks
    store = WeightStore(package, blocks, direct=True)
    buffer = allocate_buffer(store.max_buffer_bytes())
    drop_caches()
    total, start = 0, time.perf_counter()
    for part in blocks:
        total += store.read_into(part.name, buffer).stats.nbytes
    return total / (time.perf_counter() - start)


def minimum_budget(package: Path) -> int:
    from edge.errors import BudgetTooSmallError
    from edge.package import open_package
    from edge.streaming import StreamConfig

    try:
        StreamConfig(1 << 20, max_context=512).plan(open_package(package))
    except BudgetTooSmallError as exc:
        return exc.minimum
    return 1 << 20


def run(package: Path, budget: int, tokens: int, plot: str) -> dict:
    drop_caches()
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(package), str(budget), str(tokens), plot],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("package", type=Path)
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--timeline", default="bench/results/stream_timeline.png")
    args = parser.parse_args()

    from edge.format import read_manifest

    weights = sum(t.nbytes for p in read_manifest(args.package).parts for t in p.tensors)
    floor = minimum_budget(args.package)
    disk = disk_throughput(args.package)
    resident = run(args.package, 4 * weights, args.tokens, "-")  # nothing streamed
    compute_bound = resident["tok_s"]
    print(
        f"weights {weights / 2**20:.0f} MiB; minimum budget {floor / 2**20:.0f} MiB; cold "
        f"O_DIRECT read {disk / 1e9:.2f} GB/s; all resident {compute_bound:.2f} tok/s "
        f"(peak RSS {resident['peak_rss'] / 2**20:.0f} MiB)\n"
    )
    print(
        "| budget | streamed blocks (window) | tok/s | disk bound tok/s | efficiency | "
        "MB read/token | I/O wait ms | compute ms | overlap | peak RSS / budget |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for fraction in args.fractions:
        budget = max(int(fraction * weights), floor)
        note = "" if budget == int(fraction * weights) else " (raised to the minimum)"
        r = run(args.package, budget, args.tokens, args.timeline if fraction == 0.5 else "-")
        disk_bound = disk / r["bytes"] if r["bytes"] else float("inf")
        ceiling = min(disk_bound, compute_bound)
        print(
            f"| {fraction:.0%} = {budget / 2**20:.0f} MiB{note} | {r['streamed']} "
            f"({r['window']}) | {r['tok_s']:.2f} | "
            f"{'-' if disk_bound == float('inf') else f'{disk_bound:.2f}'} | "
            f"{r['tok_s'] / ceiling:.0%} | {r['bytes'] / 1e6:.0f} | {r['io_wait'] * 1e3:.0f} | "
            f"{r['compute'] * 1e3:.0f} | {r['overlap']:.0%} | "
            f"{r['peak_rss'] / 2**20:.0f} MiB / {budget / 2**20:.0f} MiB "
            f"({r['peak_rss'] / budget:.0%}) |",
            flush=True,
        )


if __name__ == "__main__":
    main()
