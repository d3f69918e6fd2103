"""`edge devices`: the report of this machine, as text and as JSON, through the subcommand's own
configure_parser()/main() (the same objects edge.cli.main registers)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from devices import boards, gpus, microbench, npus
from devices.discovery import discover
from devices.npus import OrtInfo
from edge.cli import devices as devices_cli


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    parser = argparse.ArgumentParser(prog="edge")
    sub = parser.add_subparsers(dest="command", required=True)
    devices_cli.configure_parser(sub.add_parser("devices", help=devices_cli.HELP))
    args = parser.parse_args(["devices", *argv])
    assert devices_cli.main(args) == 0
    return capsys.readouterr().out


@pytest.fixture
def fake_measure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[int]:
    """Skip the real seconds-long benchmark: a fixed result, cached under a temporary root."""
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))
    calls: list[int] = []

    def measure(machine):
        calls.append(1)
        return microbench.Microbench(
            machine.cpu.model,
            machine.cpu.usable_cores,
            machine.onnxruntime.version,
            14.5,
            28.25,
            70.0,
            1500.0,
            "2026-11-26T12:00:00",
            3.0,
            load_average=3.0 * machine.cpu.usable_cores,
        )  # "busy": load above the cores

    monkeypatch.setattr(microbench, "measure", measure)
    return calls


def test_cli_devices_text_lists_cpu_memory_and_providers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = run(capsys, "--no-bench")
    machine = discover()
    labels = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    assert labels[:3] == ["cpu", "isa", "memory"]
    assert {"board", "gpu", "npu", "onnxruntime", "openvino", "torch", "serial"} <= set(labels)
    assert machine.cpu.model in out
    assert "CPUExecutionProvider" in out
    assert all(f in out for f in machine.cpu.features)
    if not machine.gpus:
        assert "gpu          none found" in out
    assert "measured" not in labels


def test_cli_devices_json_with_cached_bench(
    capsys: pytest.CaptureFixture[str], fake_measure: list[int]
) -> None:
    first = json.loads(run(capsys, "--json"))
    assert first["machine"]["onnxruntime"]["providers"].count("CPUExecutionProvider") == 1
    assert first["microbench"]["cached"] is False
    assert first["profile"]["memory_bandwidth_gbs"] == 28.25
    assert first["profile"]["source"].startswith("measured on this machine, 2026-11-26")
    second = json.loads(run(capsys, "--json"))
    assert second["microbench"]["cached"] is True and len(fake_measure) == 1
    json.loads(run(capsys, "--json", "--refresh"))
    assert len(fake_measure) == 2


def test_cli_devices_text_bench_line_warns_when_busy(
    capsys: pytest.CaptureFixture[str], fake_measure: list[int]
) -> None:
    out = run(capsys)
    line = next(ln for ln in out.splitlines() if ln.startswith("measured"))
    assert "28.2 GB/s" in line and "int8 GEMM 1500 GOP/s" in line and "measured now" in line
    assert "the machine was busy (load" in line
    cached = next(ln for ln in run(capsys).splitlines() if ln.startswith("measured"))
    assert "cached from 2026-11-26T12:00:00" in cached


def test_cli_devices_render_jetson_shows_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A faked Jetson tree (hardware that cannot exist here) with CPU-only onnxruntime."""
    cpu_only = OrtInfo("1.32.0", ("CPUExecutionProvider",))
    monkeypatch.setattr(npus, "read_onnxruntime", lambda: cpu_only)
    monkeypatch.setattr(npus, "read_openvino", lambda: None)
    monkeypatch.setattr(boards, "serial_ports", lambda: ())
    monkeypatch.setattr(gpus, "query_nvidia_smi", lambda timeout_s=10.0: None)
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\0")
    (tmp_path / "proc/meminfo").write_text("MemTotal: 7805952 kB\nMemAvailable: 6100000 kB\n")
    text = devices_cli.render(discover(tmp_path), None)
    assert "board        NVIDIA Jetson Orin Nano Developer Kit (jetson)" in text
    assert "shared with the CPU" in text and "no installed runtime can use it" in text
    assert "missing      the NVIDIA GPU: the onnxruntime-gpu wheel built for your JetPack" in text
    assert "openvino     not installed" in text
