"""Shared by the real-model parity tests: greedy tokens of edge and of transformers."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from edge.engine import Engine


def assert_same_greedy(
    engine: Engine, model: Any, tokenizer: Any, ids: list[int], n_tokens: int, label: str
) -> None:
    """n_tokens greedy tokens from edge equal transformers' generate(do_sample=False).

    The caller disables EOS on the reference's generation config so both run all n_tokens.
    """
    out = model.generate(
        torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=int),
        do_sample=False,
        max_new_tokens=n_tokens,
    )
    expected = out[0, len(ids) :].tolist()
    assert len(expected) == n_tokens
    engine.reset()
    logits = engine.prefill(ids)[0]
    actual = []
    for _ in range(n_tokens):
        actual.append(int(np.argmax(logits)))
        logits = engine.decode(actual[-1])
    first_diff = next((i for i, (a, b) in enumerate(zip(actual, expected)) if a != b), None)
    assert actual == expected, (
        f"{label}: greedy tokens diverge at step {first_diff}: edge "
        f"{tokenizer.decode(actual)!r} vs transformers {tokenizer.decode(expected)!r}"
    )
