"""Import order: `edge.model` imports the streamed engine, which imports `memory_sched` and
`devices.spec_forward`; both import `edge.errors`/`edge.format`, whose package `__init__`
imports `edge.model`. Each must still import first in a fresh interpreter (test modules always
import `edge` first, which hides a cycle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("module", ["memory_sched", "devices.spec_forward", "edge.streaming",
                                    "edge"])
def test_streaming_modules_import_first(module: str) -> None:
    """`python -c "import <module>"` then `edge.load` exists: no circular import, whichever
    of the streaming stack's modules a program imports first."""
    code = f"import {module}\nimport edge\nassert callable(edge.load)\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
