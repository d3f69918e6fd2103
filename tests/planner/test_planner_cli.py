"""`edge plan`: the plan in words or JSON, for this machine or a built-in profile ("what if"),
and a budget nothing fits refused with the smallest that works."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from devices.profiles import DeviceProfileError
from edge.cli import plan as plan_cli
from edge.errors import BudgetTooSmallError
from edge.format import write_manifest


def _run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    plan_cli.configure_parser(parser)
    return plan_cli.main(parser.parse_args(list(argv)))


@pytest.fixture
def package_dir(tmp_path: Path, manifest_factory) -> Path:
    """A package of the manifest's shape: sparse files of the listed sizes (planning reads the
    manifest, opens the files and asks non-default backends about the graphs)."""
    manifest = manifest_factory(layers=6, hidden=512, ffn=1024, vocab=8000)
    write_manifest(tmp_path, manifest)
    for entry in manifest.files:
        with open(tmp_path / entry.path, "wb") as fh:
            fh.truncate(entry.size)
    return tmp_path


def test_planner_cli_profile_what_if(package_dir: Path, capsys) -> None:
    assert _run(str(package_dir), "--profile", "rpi5") == 0
    out = capsys.readouterr().out
    assert "pi5/ort_cpu" in out and "tokens/s" in out and "time to first token" in out
    assert "decode:" in out and "prompt (prefill):" in out and "peak" in out


def test_planner_cli_json(package_dir: Path, capsys) -> None:
    assert _run(str(package_dir), "--profile", "jetson-orin-nano", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "resident"
    assert {d["device"] for d in data["devices"]} == {
        "jetson-orin-nano-cpu/ort_cpu",
        "jetson-orin-nano-gpu/ort_cuda",
    }
    assert data["placement"]["segments"][0]["start"] == 0
    assert data["decode_tokens_per_s"] > 0


def test_planner_cli_budget_too_small(package_dir: Path) -> None:
    with pytest.raises(BudgetTooSmallError, match="smallest budget that works"):
        _run(str(package_dir), "--profile", "rpi4", "--budget", "1MB")


def test_planner_cli_unknown_profile(package_dir: Path) -> None:
    with pytest.raises(DeviceProfileError, match="rpi5"):
        _run(str(package_dir), "--profile", "rpi9")
