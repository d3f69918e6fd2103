"""The microbenchmark's int8 graph computes exactly what numpy does, its cache is keyed and
refreshed correctly, and a real measurement gives a valid profile. No timing is asserted."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from devices import microbench
from devices.discovery import discover
from devices.microbench import Microbench, load_or_measure, measured_profile
from devices.onnx_bytes import matmul_integer_model


def test_microbench_matmul_integer_graph_is_exact() -> None:
    """The hand-encoded protobuf is a valid model and MatMulInteger matches int64 numpy."""
    rng = np.random.default_rng(1)
    weight = rng.integers(-128, 128, (48, 40), dtype=np.int8)
    x = rng.integers(0, 256, (5, 48), dtype=np.uint8)
    data = matmul_integer_model(weight, rows=5)
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {"A": x})
    assert y.dtype == np.int32
    np.testing.assert_array_equal(y, x.astype(np.int64) @ weight.astype(np.int64))
    onnx = pytest.importorskip("onnx")  # the runtime never needs it; the checker is a 2nd opinion
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)


def fake_bench(machine, **changes) -> Microbench:
    values = dict(
        cpu_model=machine.cpu.model,
        cores=machine.cpu.usable_cores,
        onnxruntime_version=machine.onnxruntime.version,
        bandwidth_1t_gbs=10.0,
        bandwidth_gbs=20.0,
        fp32_gflops=50.0,
        int8_gops=400.0,
        measured_at="2026-01-02T03:04:05",
        seconds=1.0,
        load_average=0.1,
    )
    return Microbench(**{**values, **changes})


def test_microbench_cache_hit_refresh_and_corruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine = discover()
    calls: list[int] = []

    def measure(m):
        calls.append(1)
        return fake_bench(m, fp32_gflops=50.0 + len(calls))

    monkeypatch.setattr(microbench, "measure", measure)
    first, cached = load_or_measure(machine, cache_root=tmp_path)
    assert not cached and first.fp32_gflops == 51.0
    again, cached = load_or_measure(machine, cache_root=tmp_path)
    assert cached and again == first and len(calls) == 1
    fresh, cached = load_or_measure(machine, refresh=True, cache_root=tmp_path)
    assert not cached and fresh.fp32_gflops == 52.0
    path = microbench.cache_path(machine, tmp_path)
    path.write_text("{not json")
    _, cached = load_or_measure(machine, cache_root=tmp_path)
    assert not cached and len(calls) == 3
    saved = json.loads(path.read_text())
    assert saved["cache_version"] == microbench.CACHE_VERSION


def test_microbench_cache_key_includes_onnxruntime_version(tmp_path: Path) -> None:
    machine = discover()
    other = dataclasses.replace(
        machine, onnxruntime=dataclasses.replace(machine.onnxruntime, version="0.0.1")
    )
    assert microbench.cache_path(machine, tmp_path) != microbench.cache_path(other, tmp_path)
    # a file made for another machine under the same name is not trusted
    path = microbench.cache_path(machine, tmp_path)
    path.parent.mkdir(parents=True)
    stale = {"cache_version": 1, **dataclasses.asdict(fake_bench(machine, cores=999))}
    path.write_text(json.dumps(stale))
    assert microbench._load(path, machine) is None


def test_microbench_contended_when_load_is_high() -> None:
    machine = discover()
    assert fake_bench(machine, load_average=99.0).contended
    assert not fake_bench(machine, load_average=0.0).contended
    with pytest.raises(ValueError, match="int8_gops must be > 0"):
        fake_bench(machine, int8_gops=0.0)


def test_microbench_real_measurement_gives_a_profile(tmp_path: Path) -> None:
    """One real run (a few seconds): positive rates, today's budget, a "measured" source."""
    machine = discover()
    profile = measured_profile(machine, cache_root=tmp_path)
    assert profile.kind == "cpu" and profile.cores == machine.cpu.usable_cores
    assert profile.memory_bandwidth_gbs > 0 and profile.fp32_gflops > 0 and profile.int8_gops > 0
    assert profile.source.startswith("measured on this machine, ")
    assert 0 < profile.memory_bytes <= machine.memory.total
    assert microbench.cache_path(machine, tmp_path).is_file()
