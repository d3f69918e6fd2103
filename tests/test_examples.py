"""The examples in examples/ run as documented (they are part of what users see first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_runs(smollm2_package: Path) -> None:
    """examples/quickstart.py generates, streams and chats on the real SmolLM2 package."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), str(smollm2_package)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    for label in ("generate:", "stream:", "chat:", "chat 2:"):
        assert label in done.stdout
    assert "tok/s" in done.stdout


def test_home_cluster_dry_run_prints_the_coordinators_choice(smollm2_package: Path) -> None:
    """examples/home_cluster.py --dry-run: the predictions for two modelled Pi 5 workers,
    wired and on Wi-Fi, without contacting anybody."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "home_cluster.py"),
            str(smollm2_package),
            "--dry-run",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("predicted:") == 4
    assert "wired" in done.stdout and "Wi-Fi" in done.stdout


def _example(name: str, *args: str, timeout: int = 120) -> str:
    """The example's stdout; it must exit 0."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _assert_plan(out: str, *labels: str) -> None:
    """The planner's printout: predictions, both phases, each device with its cited source."""
    assert "predicted: time to first token" in out and "tokens/s" in out
    assert "prompt (prefill):" in out and "decode:" in out and "peak" in out
    for label in labels:
        assert f"  {label}: published spec: " in out, label


@pytest.mark.parametrize("board", ["pi4", "pi5"])
def test_raspberry_pi_dry_run_plans_for_the_board(smollm2_package: Path, board: str) -> None:
    """examples/raspberry_pi.py --dry-run: the board's built-in profile, under the budget."""
    out = _example(
        "raspberry_pi.py", str(smollm2_package), "--dry-run", "--board", board, "--budget", "600MB"
    )
    _assert_plan(out, f"{board}/ort_cpu")
    assert "of 572.2 MiB" in out  # 600 MB, each device's budget


def test_raspberry_pi_answers_a_prompt_within_its_budget(smollm2_package: Path) -> None:
    """The real run on this CPU: a budget the float32 package does not fit streams it, and
    --prompt answers once and exits."""
    out = _example(
        "raspberry_pi.py",
        str(smollm2_package),
        "--budget",
        "700MB",
        "--prompt",
        "Why is the sky blue?",
        "--max-tokens",
        "6",
    )
    assert "this-machine-cpu/streamed" in out and "predicted:" in out
    assert "edge> " in out and "tok/s" in out


def test_jetson_dry_run_plans_over_cpu_and_gpu(smollm2_package: Path) -> None:
    """examples/jetson.py --dry-run: the Orin Nano's CPU and its GPU through torch."""
    out = _example("jetson.py", str(smollm2_package), "--dry-run", "--gpu-backend", "torch")
    _assert_plan(out, "jetson-orin-nano-cpu/ort_cpu", "jetson-orin-nano-gpu/torch")
    assert "GPU through torch" in out


def test_laptop_npu_dry_run_says_why_the_npu_waits(smollm2_package: Path) -> None:
    """examples/laptop_npu.py --dry-run: the Core Ultra's CPU and NPU; a package without static
    int8 graphs keeps the prompt off the NPU, and the plan says so."""
    out = _example("laptop_npu.py", str(smollm2_package), "--dry-run")
    _assert_plan(out, "core-ultra-7-155h-cpu/ort_cpu", "core-ultra-7-155h-npu/openvino")
    assert "not on core-ultra-7-155h-npu/openvino: npu: part has no static int8 graph" in out


def test_server_dry_run_says_what_it_would_start() -> None:
    out = _example("server.py", "--dry-run")
    assert "would serve 'smollm2-135m'" in out and "one streamed" in out


def test_server_serves_the_openai_client(smollm2_package: Path) -> None:
    """examples/server.py: `edge serve` on a thread, one chat completion and one streamed
    through the official client, then a clean stop."""
    pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    out = _example("server.py", str(smollm2_package), "--max-tokens", "8", timeout=300)
    assert f"serving '{smollm2_package.name}'" in out
    assert "chat:" in out and "stream:" in out and " chunks in " in out
    assert out.rstrip().endswith("server stopped")
