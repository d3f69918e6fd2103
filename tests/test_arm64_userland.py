"""The Raspberry Pi example answers the same under arm64 (qemu-user, Debian userland) as here.

The only arm64 check short of a Pi: aarch64 wheels, `pip install` of edge, the NEON build of the
JIT int4 kernel and its tests, all run for real by `bench/arm64_userland.py`. Minutes of
emulated CPU (~3 minutes on 2 cores; the first, which builds the root: 8.5), so `slow`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "arm64_userland.py"


def _unavailable() -> str | None:
    """Why this host cannot run the check, or None."""
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot, mount)"
    missing = [t for t in ("debootstrap", "qemu-aarch64-static", "chroot") if not shutil.which(t)]
    if missing:
        apt = "apt-get install -y qemu-user-static debootstrap binfmt-support"
        return f"{', '.join(missing)} not installed ({apt})"
    return None


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_raspberry_pi_example_same_greedy_reply_under_arm64(
    smollm2_gguf: Path, tmp_path: Path
) -> None:
    """The package `edge run` makes by default (int4, AWQ, zero points): at the script's
    460MB budget it streams on both sides, so the JIT kernel computes every matmul."""
    reason = _unavailable()
    if reason is not None:
        pytest.skip(reason)
    from exporters.defaults import default_export_config
    from exporters.export import export

    package = export(
        smollm2_gguf, tmp_path / "int4", default_export_config(smollm2_gguf), progress=False
    )
    out = tmp_path / "arm64.json"
    result = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--kernel-tests",
            "--package",
            str(package),
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=3600,
    )
    if result.returncode == 2:  # the script found no binfmt_misc or qemu entry
        pytest.skip(result.stderr.strip())
    assert out.exists(), result.stdout[-4000:] + result.stderr[-4000:]
    summary = json.loads(out.read_text())
    assert "aarch64" in summary["arm64_target"], summary["arm64_target"]
    streamed = {side: summary[side]["streamed"] for side in ("x86", "arm64")}
    assert all(streamed.values()), f"a resident plan: the JIT kernel did not run ({streamed})"
    assert summary["arm64"]["text"] == summary["x86"]["text"]
    assert summary["kernel_tests"]["passed"], summary.get("kernel_tests_output")
