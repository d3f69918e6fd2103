"""The examples in examples/ run as documented (they are part of what users see first)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
