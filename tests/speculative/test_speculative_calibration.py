"""What the controller learns is kept per target, draft and machine, so the next process starts
informed; damaged or foreign files are ignored, never trusted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edge
from edge.speculative import SpeculativeConfig
from edge.speculative.calibration import load_calibration, save_calibration
from edge.speculative.controller import DraftController

PLAIN = 0.010


def _learned() -> DraftController:
    controller = DraftController(SpeculativeConfig())
    controller.record_plain(PLAIN)
    for _ in range(20):
        controller.record_round("ngram1", 3, 0, draft_seconds=0.0, verify_seconds=1.4 * PLAIN)
        controller.record_round("ngram4", 6, 6, draft_seconds=0.0, verify_seconds=2.0 * PLAIN)
    return controller


def test_round_trip_restores_the_decisions(tmp_path: Path) -> None:
    learned = _learned()
    path = tmp_path / "c.json"
    save_calibration(path, learned.snapshot())
    fresh = DraftController(SpeculativeConfig())
    assert fresh.next_k("ngram1") == 0  # knows nothing yet: measures plain decoding first
    fresh.restore(load_calibration(path))
    assert fresh.plain_step.value == pytest.approx(PLAIN)
    assert fresh.next_k("ngram1") == 0  # a losing kind stays off ...
    assert fresh.next_k("ngram4") > 1  # ... a winning one drafts (at a lighter weight)


@pytest.mark.parametrize(
    "text",
    [
        "{",
        "[]",
        "null",
        '{"version": 99}',
        '{"version": 1, "plain_step": -1, "verify_slope": 0.2, "draft_token": {}, '
        '"acceptance": {}}',
        '{"version": 1, "plain_step": 0.01, "verify_slope": 0.2, "draft_token": {"m": "x"}, '
        '"acceptance": {}}',
        '{"version": 1, "plain_step": 0.01, "verify_slope": 0.2, "draft_token": {}, '
        '"acceptance": {"m": [5, 2]}}',
        '{"version": 1, "plain_step": NaN, "verify_slope": 0.2, "draft_token": {}, '
        '"acceptance": {}}',
        '{"version": 1, "plain_step": 0.01}',
    ],
)
def test_damaged_files_are_ignored(tmp_path: Path, text: str) -> None:
    path = tmp_path / "c.json"
    path.write_text(text)
    assert load_calibration(path) is None
    assert load_calibration(tmp_path / "missing.json") is None


def test_edge_load_remembers_between_processes(
    tmp_path: Path, target: Path, spec_prompt_ids: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """edge.load keeps the file under the cache root; a second load starts from it."""
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path))
    model = edge.load(str(target), draft="lookup", threads=1, progress=False)
    assert model.speculative.controller.plain_step.value is None
    list(model.stream(spec_prompt_ids, max_tokens=12, ignore_eos=True))
    files = list((tmp_path / "speculative").glob("*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["plain_step"] > 0
    again = edge.load(str(target), draft="lookup", threads=1, progress=False)
    assert again.speculative.calibration == files[0]
    assert again.speculative.controller.plain_step.value == pytest.approx(saved["plain_step"])


def test_catch_up_cost_is_kept(tmp_path: Path) -> None:
    """The cost of catching a draft model up travels too: without it a new process would
    engage the model (and pay its prompt prefill) just to learn it again."""
    learned = _learned()
    learned.record_catch_up(100, 0.3)
    path = tmp_path / "c.json"
    save_calibration(path, learned.snapshot())
    fresh = DraftController(SpeculativeConfig())
    fresh.restore(load_calibration(path))
    assert fresh.catch_up_token.value == pytest.approx(0.003)
