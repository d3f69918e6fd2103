"""`edge.load(..., plan=...)`: the planner's placement ("auto") or a placement file runs the
model, with the same greedy tokens as the default engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import edge
from edge.errors import ConfigError
from edge.placement import Placement

PROMPT = "The capital of France is"


def _greedy(model: edge.Model) -> list[int]:
    return [r.token for r in model.stream(PROMPT, max_tokens=8, ignore_eos=True)]


@pytest.fixture(scope="module")
def reference(smollm2_package: Path) -> list[int]:
    return _greedy(edge.load(smollm2_package, max_context=256, progress=False))


def test_auto_plan_runs_with_the_same_tokens(smollm2_package: Path, reference: list[int]) -> None:
    model = edge.load(smollm2_package, max_context=256, plan="auto", progress=False)
    assert _greedy(model) == reference


def test_placement_file_runs_split_with_the_same_tokens(
    smollm2_package: Path, tmp_path: Path, reference: list[int]
) -> None:
    placement = Placement.split(
        32, [(0, "ort_cpu"), (12, "ort_cpu", {"threads": 1}), (24, "ort_cpu")]
    )
    path = tmp_path / "plan.json"
    path.write_text(json.dumps({"placement": placement.to_dict()}))
    model = edge.load(smollm2_package, max_context=256, plan=path, progress=False)
    assert len(model.engine.segments) == 3
    assert _greedy(model) == reference


def test_unreadable_plan_file_is_a_clear_error(smollm2_package: Path, tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read the plan"):
        edge.load(smollm2_package, plan=path, progress=False)
