"""Perplexity on real text, checked against transformers on the same weights and windows."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edge.engine import Engine
from edge.evaluate import PerplexityConfig, default_corpus, perplexity
from edge.package import open_package
from edge.tokenizer import Tokenizer


def _reference_nll(model, ids: list[int], window: int, stride: int) -> float:
    """Hugging Face's sliding-window recipe: each token scored once, with the window's context."""
    total, count, scored_to, start = 0.0, 0, 1, 0
    while scored_to < len(ids):
        end = min(start + window, len(ids))
        with torch.inference_mode():
            logits = model(torch.tensor([ids[start:end]])).logits[0].double()
        logp = torch.log_softmax(logits, -1)
        for pos in range(max(scored_to, start + 1), end):
            total -= float(logp[pos - start - 1, ids[pos]])
            count += 1
        scored_to = end
        start = min(start + stride, end - 1) if end < len(ids) else end
    return total / count


def test_perplexity_matches_transformers(smollm2_package, smollm2_reference) -> None:
    """edge's perplexity of real English equals transformers' within 1e-3 relative."""
    model, _ = smollm2_reference
    package = open_package(smollm2_package)
    tok = Tokenizer.from_package(package)
    ids = tok.encode(default_corpus()[:4000], add_special_tokens=False)[:300]
    engine = Engine(package)
    result = perplexity(engine, ids, PerplexityConfig(window=128, stride=64))
    expected = _reference_nll(model, ids, 128, 64)
    assert result.tokens == len(ids) - 1
    assert result.nll == pytest.approx(expected, rel=1e-3)
    assert result.perplexity == pytest.approx(math.exp(expected), rel=1e-3)
    assert 3 < result.perplexity < 60  # a working 135M model on English documentation


def test_perplexity_rejects_bad_windows() -> None:
    """Window and stride out of range are refused with both values named."""
    for window, stride in ((1, 1), (64, 0), (64, 65)):
        with pytest.raises(ValueError, match="window"):
            PerplexityConfig(window=window, stride=stride)
    assert np.isfinite(PerplexityConfig().window)
