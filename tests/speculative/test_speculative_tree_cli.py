"""`edge run --tree N`: bad tree settings end with one "error:" line and exit 2, before any
model is loaded (the model named here does not exist)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli.main import main


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--draft", "lookup", "--tree", "0"], "--tree"),
        (["--draft", "lookup", "--tree", "64"], "max_nodes=64"),
        (["--tree", "8"], "--tree needs --draft"),
    ],
)
def test_bad_tree_settings_fail_before_loading(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    rc = main(["run", "/nonexistent-model", "x", *args])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and "Traceback" not in err
    assert "error:" in err and needle in err
