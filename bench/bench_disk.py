"""Cold sequential read throughput of a package's weight files through `WeightStore`.

    python bench/bench_disk.py [PACKAGE] [--runs 5] [--chunks 1,8,32]

Reads every weight file of the package once per run (each file as one unit, the way a block
is streamed), buffered and with O_DIRECT, for each chunk size, and prints a table. Buffered
runs start cold: the page cache is dropped (`/proc/sys/vm/drop_caches`, as root) or else each
file's pages are evicted with `posix_fadvise(DONTNEED)`; O_DIRECT bypasses the page cache.
A warm buffered row (page cache kept) and a row streaming the blocks through the `Prefetcher`
(window 2, consumer doing no work) show the ceiling and the prefetcher's own overhead; `dd`
over the same files (timed by dd itself) is the baseline to compare ratios with, since a shared
VM's disk varies run to run. Cases are interleaved within each run; medians are printed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.format import Manifest, PartEntry, read_manifest
from memory_sched.prefetcher import Prefetcher
from memory_sched.store import WeightStore, allocate_buffer
from memory_sched.window import WindowPolicy

MiB = 1 << 20
DEFAULT_PACKAGE = Path.home() / ".cache" / "edge" / "packages" / "smollm2-135m"


def file_units(manifest: Manifest) -> list[PartEntry]:
    """One unit per weight file holding all its tensors (a tied tensor listed once)."""
    tensors: dict[str, dict[int, object]] = {}
    for part in manifest.parts:
        for tensor in part.tensors:
            tensors.setdefault(tensor.file, {})[tensor.offset] = tensor
    return [
        PartEntry(file, "block", "", tuple(by_offset.values()), (), ())
        for file, by_offset in tensors.items()
    ]


def drop_caches(root: Path, files: list[str]) -> str:
    """Make the next buffered read cold; returns how."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return "drop_caches"
    except OSError:
        for name in files:
            fd = os.open(root / name, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "fadvise"


def read_all(store: WeightStore, names: list[str]) -> tuple[float, int, list[float]]:
    buffer = allocate_buffer(store.max_buffer_bytes(names))
    seconds: list[float] = []
    nbytes = 0
    start = time.perf_counter()
    for name in names:
        stats = store.read_into(name, buffer).stats
        seconds.append(stats.seconds)
        nbytes += stats.nbytes
    return time.perf_counter() - start, nbytes, seconds


def stream_blocks(root: Path, manifest: Manifest, chunk: int, direct: bool) -> tuple[float, int]:
    blocks = list(manifest.blocks)
    store = WeightStore(root, blocks, direct, chunk_bytes=chunk)
    policy = WindowPolicy(tuple(b.name for b in blocks), 2)
    start = time.perf_counter()
    with Prefetcher(store, policy) as prefetcher:
        for block in blocks:
            prefetcher.acquire(block.name)
            prefetcher.release(block.name)
        elapsed = time.perf_counter() - start
        nbytes = sum(e.nbytes for e in prefetcher.events() if e.kind == "read" and e.step == 0)
    return elapsed, nbytes


def dd_read(root: Path, names: list[str], chunk_mib: int, direct: bool) -> tuple[float, int]:
    """The baseline: coreutils dd over the same files, timed by dd itself (no spawn cost)."""
    elapsed, nbytes = 0.0, 0
    for name in names:
        command = ["dd", f"if={root / name}", "of=/dev/null", f"bs={chunk_mib}M"]
        done = subprocess.run(
            command + (["iflag=direct"] if direct else []),
            check=True,
            capture_output=True,
            text=True,
        )
        match = re.search(r"^(\d+) bytes.* copied, ([\d.]+) s", done.stderr, re.MULTILINE)
        assert match, done.stderr
        nbytes += int(match.group(1))
        elapsed += float(match.group(2))
    return elapsed, nbytes


def run_case(
    root: Path, manifest: Manifest, units: list[PartEntry], mode: str, chunk_mib: int
) -> tuple[float, int, float, str]:
    """One cold (or warm) pass over the files: (seconds, bytes, median s per file, how)."""
    names = [u.name for u in units]
    chunk = chunk_mib * MiB
    direct = "direct" in mode
    how = "O_DIRECT" if direct else ""
    if not direct and mode != "buffered-warm":
        how = drop_caches(root, names)
    if mode.startswith("dd"):
        elapsed, nbytes = dd_read(root, names, chunk_mib, direct)
        return elapsed, nbytes, float("nan"), how
    if mode == "prefetch-direct":
        elapsed, nbytes = stream_blocks(root, manifest, chunk, True)
        return elapsed, nbytes, float("nan"), how
    store = WeightStore(
        root, units, direct=direct, chunk_bytes=chunk, drop_page_cache=mode != "buffered-warm"
    )
    if mode == "buffered-warm":
        read_all(store, names)  # fill the page cache
        how = "warm"
    elapsed, nbytes, seconds = read_all(store, names)
    if store.direct_fallback:
        how = f"buffered ({store.direct_fallback})"
    return elapsed, nbytes, statistics.median(seconds), how


def measure(args: argparse.Namespace) -> list[tuple]:
    """Every case once per run, cases interleaved, so disk noise hits all of them alike."""
    root = Path(args.package)
    manifest = read_manifest(root)
    units = file_units(manifest)
    cases = [(mode, chunk) for chunk in args.chunks for mode in ("buffered", "direct")]
    cases += [("buffered-warm", 8), ("prefetch-direct", 8)]
    if shutil.which("dd"):
        cases += [("dd", 8), ("dd-direct", 8)]
    results: dict[tuple[str, int], list[tuple[float, int, float, str]]] = {c: [] for c in cases}
    for _ in range(args.runs):
        for case in cases:
            results[case].append(run_case(root, manifest, units, *case))
    rows = []
    for (mode, chunk), runs in results.items():
        rates = [nbytes / elapsed for elapsed, nbytes, _, _ in runs]
        rows.append(
            (
                mode,
                chunk,
                statistics.median(rates),
                min(rates),
                max(rates),
                runs[0][1],
                statistics.median(r[2] for r in runs) * 1e3,
                runs[-1][3],
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("package", nargs="?", default=str(DEFAULT_PACKAGE))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--chunks", default="1,8,32", help="chunk sizes in MiB")
    args = parser.parse_args()
    args.chunks = [int(c) for c in args.chunks.split(",")]
    rows = measure(args)
    print(
        f"{'mode':<16} {'chunk':>6} {'GB/s med':>9} {'min':>6} {'max':>6} {'MB/run':>7} "
        f"{'ms/file':>8}  cold by"
    )
    for mode, chunk, med, low, high, nbytes, per_file, how in rows:
        print(
            f"{mode:<16} {chunk:>4}Mi {med / 1e9:>9.2f} {low / 1e9:>6.2f} {high / 1e9:>6.2f} "
            f"{nbytes / 1e6:>7.0f} {per_file:>8.1f}  {how}"
        )


if __name__ == "__main__":
    main()
