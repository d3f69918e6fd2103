"""Trees are accounted like any draft: a tree pass made slow (as on a target whose
multi-token passes are dear) reports a speedup below 1, and trees switch themselves off
after the rounds that measured the loss, the text staying plain greedy's."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.generate import GenerationConfig, stream_tokens
from edge.model import Model
from edge.runner import Runner
from edge.speculative import LookupDraft, SpeculativeConfig, SpeculativeDecoder, TreeConfig
from edge.speculative.controller import DraftController

N = 48
STEP = 0.002


class DearTrees:
    """A target whose tree passes take 64 plain steps longer: one such pass loses more than
    half of the response (CI load makes smaller losses read as noise)."""

    def __init__(self, engine: Runner) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def decode(self, token_id: int) -> np.ndarray:
        time.sleep(STEP)
        return self.engine.decode(token_id)

    def verify_tree(self, token_ids: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        time.sleep(64 * STEP)
        return self.engine.verify_tree(token_ids, parents)


def test_losing_trees_report_it_and_switch_off(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int]
) -> None:
    model = load_tiny(target, draft=LookupDraft(), speculative=SpeculativeConfig(tree=TreeConfig()))
    dear, config = DearTrees(model.engine), GenerationConfig(max_tokens=N, ignore_eos=True)
    expected = [r.token for r in stream_tokens(dear, model.tokenizer, spec_prompt_ids, config)]
    decoder = SpeculativeDecoder(dear, LookupDraft(), SpeculativeConfig(tree=TreeConfig()))
    responses = list(decoder.stream(model.tokenizer, spec_prompt_ids, config))
    assert [r.token for r in responses] == expected
    rounds = decoder.controller.kinds["tree"].rounds
    stats = responses[-1].speculation
    assert 1 <= rounds <= DraftController.MEASURED_ROUNDS + 1, (rounds, stats)
    assert stats.speedup < 1, stats
