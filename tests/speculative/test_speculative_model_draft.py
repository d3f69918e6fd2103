"""ModelDraft: its cache follows the committed history, and the catch-up it does inside a
proposal (the prompt, or text another source drafted) is reported apart from drafting, so the
controller does not mistake a one-off prefill for the per-token cost of drafting."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edge.model import Model
from edge.speculative import ModelDraft


def test_catch_up_is_reported_as_setup(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int]
) -> None:
    draft = ModelDraft(load_tiny(target).engine)
    history = list(spec_prompt_ids)
    first = draft.propose(history, 3)
    assert len(first.tokens) == 3 and first.key == first.source == "model"
    assert first.setup_seconds > 0  # the whole prompt was fed
    history += [*first.tokens[:2], 7]  # two accepted, then the target's own token
    second = draft.propose(history, 3)
    assert second.setup_seconds == 0.0  # one new token past its cache: an ordinary round
    assert draft.engine.position == len(history) + 2  # history + all drafted but the last
    history += [5, 6, 8, 9]  # text it did not draft (lookup's): caught up, reported as setup
    assert draft.propose(history, 2).setup_seconds > 0
