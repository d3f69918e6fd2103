"""A few-second measured profile of this machine's CPU: memory bandwidth, fp32 and int8 GEMM.

Published specs say what a chip could do; the planner needs what it does here, under this
container's cores and this onnxruntime. Results are cached as JSON in edge's cache directory,
keyed by CPU model, usable cores and onnxruntime version (a change in any of them remeasures);
`refresh=True` remeasures regardless.

>>> from devices.microbench import measured_profile
>>> measured_profile().memory_bandwidth_gbs  # doctest: +SKIP
28.7
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from devices.discovery import Machine, discover
from devices.onnx_bytes import matmul_integer_model
from devices.profiles import DeviceProfile
from edge.paths import cache_dir

CACHE_VERSION = 1
GEMM_N = 1536  # fp32: 7 GFLOP per product, ~0.1 s on 2 cores; big enough to leave the caches
INT8_N = 1024  # int8: 2 GOP per product, a few ms with VNNI/AMX
MIN_BANDWIDTH_BYTES = 64 << 20


@dataclass(frozen=True)
class Microbench:
    """Measured rates of this machine; what the cache file holds."""

    cpu_model: str
    cores: int
    onnxruntime_version: str
    bandwidth_1t_gbs: float
    bandwidth_gbs: float
    fp32_gflops: float
    int8_gops: float
    measured_at: str  # ISO date-time, local time
    seconds: float
    load_average: float | None = None  # 1-minute load when measuring: busy machines read low

    @property
    def contended(self) -> bool:
        """True when other work ran on the cores (load above half of them): rates read low."""
        return self.load_average is not None and self.load_average > self.cores / 2

    def __post_init__(self) -> None:
        for field in ("bandwidth_1t_gbs", "bandwidth_gbs", "fp32_gflops", "int8_gops"):
            if not getattr(self, field) > 0:
                raise ValueError(f"Microbench.{field} must be > 0, got {getattr(self, field)}")


def _best_rate(
    work: float, run: Callable[[], object], repeats: int, budget_s: float = 1.0
) -> float:
    """work / fastest of `repeats` timed runs (after a warm-up), stopping early past budget_s."""
    run()  # warm-up: thread pools, page faults, ORT's first-run allocations
    best = float("inf")
    start = time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() - start > budget_s:
            break
    return work / best / 1e9


def fp32_gemm_gflops(n: int = GEMM_N) -> float:
    """numpy's BLAS on an n x n fp32 product (all of BLAS's threads)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return _best_rate(2.0 * n**3, lambda: a @ b, repeats=5)


def int8_gemm_gops(threads: int, n: int | None = None) -> float:
    """ONNX Runtime's MatMulInteger (uint8 x int8 -> int32, pre-packed weight) on n x n.

    n defaults to INT8_N, doubled past 4 threads: a few-ms product cannot keep 16 cores busy.
    """
    import onnxruntime

    n = n or (INT8_N if threads <= 4 else 2 * INT8_N)

    rng = np.random.default_rng(0)
    weight = rng.integers(-128, 128, (n, n), dtype=np.int8)
    activations = rng.integers(0, 256, (n, n), dtype=np.uint8)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(
        matmul_integer_model(weight, n), options, providers=["CPUExecutionProvider"]
    )
    feeds = {"A": activations}
    return _best_rate(2.0 * n**3, lambda: session.run(None, feeds), repeats=10)


def measure(machine: Machine) -> Microbench:
    """Run the benchmarks now (a few seconds)."""
    from devices.bandwidth import DEFAULT_SIZE_BYTES, measure_read_bandwidth

    start = time.perf_counter()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cores = machine.cpu.usable_cores
    # Large enough to leave big server L3s, small enough for a 4 GB Pi (an eighth of the budget).
    size = min(DEFAULT_SIZE_BYTES, max(MIN_BANDWIDTH_BYTES, machine.memory.budget // 8))
    one = measure_read_bandwidth(1, size)
    every = measure_read_bandwidth(cores, size) if cores > 1 else one
    # int8 first: OpenBLAS's threads keep spinning after a product and would steal ORT's cores
    # (16 threads measured 650 instead of 10,000 GOP/s in that order); ORT's pool dies with
    # its session when int8_gemm_gops returns.
    int8 = int8_gemm_gops(cores)
    fp32 = fp32_gemm_gflops()
    return Microbench(
        machine.cpu.model,
        cores,
        machine.onnxruntime.version,
        round(one, 2),
        round(every, 2),
        round(fp32, 1),
        round(int8, 1),
        datetime.datetime.now().isoformat(timespec="seconds"),
        round(time.perf_counter() - start, 2),
        None if load is None else round(load, 2),
    )


def cache_path(machine: Machine, cache_root: Path | None = None) -> Path:
    """One file per (CPU model, usable cores, onnxruntime version)."""
    if cache_root is None:
        cache_root = cache_dir()
    key = f"{machine.cpu.model}|{machine.cpu.usable_cores}|{machine.onnxruntime.version}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return cache_root / "devices" / f"microbench-{digest}.json"


def _load(path: Path, machine: Machine) -> Microbench | None:
    """The cached result, or None when absent, unreadable or made for another machine."""
    try:
        data = json.loads(path.read_text())
        if data.pop("cache_version", None) != CACHE_VERSION:
            return None
        bench = Microbench(**data)
    except (OSError, ValueError, TypeError):
        return None
    same = (bench.cpu_model, bench.cores, bench.onnxruntime_version) == (
        machine.cpu.model,
        machine.cpu.usable_cores,
        machine.onnxruntime.version,
    )
    return bench if same else None


def load_or_measure(
    machine: Machine | None = None, *, refresh: bool = False, cache_root: Path | None = None
) -> tuple[Microbench, bool]:
    """(result, came_from_cache). Measures and rewrites the cache when needed or asked."""
    machine = machine or discover()
    path = cache_path(machine, cache_root)
    cached = None if refresh else _load(path, machine)
    if cached is not None:
        return cached, True
    bench = measure(machine)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps({"cache_version": CACHE_VERSION, **dataclasses.asdict(bench)}, indent=1)
    )
    tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return bench, False


def measured_profile(
    machine: Machine | None = None, *, refresh: bool = False, cache_root: Path | None = None
) -> DeviceProfile:
    """This machine's CPU as a `DeviceProfile`: measured rates, today's memory budget."""
    machine = machine or discover()
    bench, _ = load_or_measure(machine, refresh=refresh, cache_root=cache_root)
    return profile_from(bench, machine)


def profile_from(bench: Microbench, machine: Machine) -> DeviceProfile:
    """Combine cached rates with the memory budget, which changes from minute to minute."""
    return DeviceProfile(
        name="this-machine-cpu",
        kind="cpu",
        memory_bytes=max(1, machine.memory.budget),
        memory_bandwidth_gbs=bench.bandwidth_gbs,
        fp32_gflops=bench.fp32_gflops,
        int8_gops=bench.int8_gops,
        cores=bench.cores,
        source=f"measured on this machine, {bench.measured_at[:10]} ({machine.cpu.model})",
    )
