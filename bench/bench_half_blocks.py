"""Half-block streaming units (attention / MLP) against whole blocks: the memory they save.

    python bench/bench_half_blocks.py PACKAGE [PACKAGE ...] [--windows 1 2] [--steps 3]

For each package, every block is streamed (nothing pinned) through `memory_sched`'s
prefetcher with O_DIRECT reads, as whole blocks and as halves, with a window of 1 and 2
buffers, each in a fresh process. Printed per run: the largest unit (one pool buffer), the pool,
and the peak RSS the streaming added (VmHWM after `--steps` passes over every unit, minus VmRSS
before the pool was allocated). The planner's minimum budget moves by exactly the change in the
largest unit (`memory_sched.budget.minimum_budget`: everything resident + one unit).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def child(package: str, split: bool, window: int, steps: int) -> dict[str, float]:
    """One run in this process: stream every block `steps` times; sizes in MiB."""
    from edge.format import read_manifest
    from memory_sched import Prefetcher, WeightStore, WindowPolicy, stream_units

    manifest = read_manifest(package)
    units = stream_units(manifest.blocks, split_blocks=split)
    store = WeightStore(package, units, direct=True)
    policy = WindowPolicy(tuple(u.name for u in units), window)
    before = _status_kib("VmRSS")
    with Prefetcher(store, policy) as prefetcher:
        for _ in range(steps):
            for unit in policy.streamed:
                weights = prefetcher.acquire(unit)
                int(sum(int(a.reshape(-1)[:1].view("u1")[0]) for a in weights.tensors.values()))
                prefetcher.release(unit)
        unit_bytes = prefetcher.buffer_bytes
    peak = _status_kib("VmHWM")
    mib = 1 << 20
    return {
        "units": len(units),
        "unit_mib": unit_bytes / mib,
        "pool_mib": window * unit_bytes / mib,
        "rss_added_mib": (peak - before) / 1024,
        "direct": float(store.direct),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("packages", nargs="*")
    parser.add_argument("--windows", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("PACKAGE", "SPLIT", "WINDOW"))
    args = parser.parse_args()
    if args.child:
        package, split, window = args.child
        print(json.dumps(child(package, split == "1", int(window), args.steps)))
        return
    print(
        "| package | window | whole: unit / pool / RSS added MiB | "
        "halves: unit / pool / RSS added MiB | saved (RSS) |\n|---|---|---|---|---|"
    )
    for package in args.packages:
        for window in args.windows:
            runs = {}
            for split in ("0", "1"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        *("--steps", str(args.steps), "--child", package, split, str(window)),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                runs[split] = json.loads(out.stdout.strip().splitlines()[-1])
            whole, half = runs["0"], runs["1"]
            print(
                f"| {Path(package).name} | {window} | {whole['unit_mib']:.1f} / "
                f"{whole['pool_mib']:.1f} / {whole['rss_added_mib']:.1f} | "
                f"{half['unit_mib']:.1f} / {half['pool_mib']:.1f} / "
                f"{half['rss_added_mib']:.1f} | "
                f"{whole['rss_added_mib'] - half['rss_added_mib']:.1f} MiB |",
                flush=True,
            )


if __name__ == "__main__":
    main()
