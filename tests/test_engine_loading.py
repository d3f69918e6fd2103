"""Loading shows progress: building ONNX Runtime's sessions for a large model takes seconds
with nothing else on the screen, so the engine draws a bar over the weights it loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.engine import Engine, EngineConfig
from edge.package import open_package


def test_loading_draws_a_bar_over_the_weights(
    smollm2_package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    Engine(open_package(smollm2_package), EngineConfig(max_context=64), progress=True).close()
    drawn = capsys.readouterr().err
    assert f"load {smollm2_package.name}" in drawn and "100%" in drawn
    Engine(open_package(smollm2_package), EngineConfig(max_context=64), progress=False).close()
    assert "load" not in capsys.readouterr().err
