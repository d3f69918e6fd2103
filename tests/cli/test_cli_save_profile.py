"""`edge devices --save-profile FILE` writes this machine's measured profile for sharing, and
`edge plan --profile FILE` plans for it anywhere."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from devices import microbench
from devices.profiles import DeviceProfileError, read_profile_file
from edge.cli import devices as devices_cli
from edge.cli import plan as plan_cli
from edge.errors import ConfigError
from edge.planner.machine import profile_devices


def run(cli, *argv: str) -> int:  # type: ignore[no-untyped-def]
    parser = argparse.ArgumentParser()
    cli.configure_parser(parser)
    return cli.main(parser.parse_args(list(argv)))


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fixed micro-benchmark instead of seconds of measuring."""

    def load_or_measure(machine, *, refresh: bool = False):  # type: ignore[no-untyped-def]
        bench = microbench.Microbench(
            cpu_model=machine.cpu.model,
            cores=4,
            onnxruntime_version=machine.onnxruntime.version,
            bandwidth_1t_gbs=6.0,
            bandwidth_gbs=9.5,
            fp32_gflops=48.0,
            int8_gops=140.0,
            measured_at="2026-12-01T10:00:00",
            seconds=3.0,
        )
        return bench, True

    monkeypatch.setattr(microbench, "load_or_measure", load_or_measure)


def test_save_profile_writes_a_file_named_after_it(
    measured: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "my-pi5.json"
    assert run(devices_cli, "--json", "--save-profile", str(path)) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["profile"]["memory_bandwidth_gbs"] == 9.5  # stdout stays JSON
    assert f"profile 'my-pi5' written to {path}" in err
    (profile,) = read_profile_file(path)
    assert (profile.name, profile.kind, profile.memory_pool) == ("my-pi5", "cpu", "my-pi5")
    assert (profile.memory_bandwidth_gbs, profile.int8_gops, profile.cores) == (9.5, 140.0, 4)
    assert profile.source.startswith("measured on this machine, 2026-12-01")
    (device,) = profile_devices([str(path)], "50%")
    assert device.label == "my-pi5/ort_cpu" and device.budget == profile.memory_bytes // 2


def test_plan_reads_a_saved_profile(
    measured: None, tmp_path: Path, smollm2_package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "friends-pi.json"
    run(devices_cli, "--json", "--save-profile", str(path))
    capsys.readouterr()
    assert run(plan_cli, str(smollm2_package), "--profile", str(path), "--ctx", "256") == 0
    out = capsys.readouterr().out
    assert "friends-pi/ort_cpu" in out and "tokens/s" in out


def test_save_profile_refusals(measured: None, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs the micro-benchmark"):
        run(devices_cli, "--no-bench", "--save-profile", str(tmp_path / "p.json"))
    with pytest.raises(ConfigError, match="cannot write the profile"):
        run(devices_cli, "--save-profile", str(tmp_path / "no" / "such" / "p.json"))
    with pytest.raises(DeviceProfileError, match="cannot read the profile file"):
        profile_devices([str(tmp_path / "missing.json")])
