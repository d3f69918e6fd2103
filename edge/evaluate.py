"""Perplexity on real text with a sliding window: how much quality a package keeps."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge.engine import Engine


@dataclass(frozen=True)
class PerplexityConfig:
    """`window` tokens of context per evaluation; windows advance by `stride` tokens and only
    the tokens new to a window are scored (so each token is scored once, with at least
    `window - stride` tokens of context except at the start)."""

    window: int = 512
    stride: int = 256
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.window < 2 or not 1 <= self.stride <= self.window:
            raise ValueError(
                f"need window >= 2 and 1 <= stride <= window, got window="
                f"{self.window}, stride={self.stride}"
            )


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int


def default_corpus() -> str:
    """Real English shipped with CPython: the text of its `pydoc` help topics."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    # logits: [T, V] float32; per-row logsumexp in float64 for a stable sum over 150k entries
    peak = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - peak).sum(axis=1, dtype=np.float64)) + peak[:, 0]
    return logits[np.arange(len(targets)), targets] - lse


def perplexity(
    engine: Engine,
    tokens: list[int],
    config: PerplexityConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> PerplexityResult:
    """Perplexity of `tokens` under the engine's model (sliding window, see PerplexityConfig)."""
    config = config or PerplexityConfig()
    ids = np.asarray(tokens[: config.max_tokens] if config.max_tokens else tokens, np.int64)
    window = min(config.window, engine.max_context)
    if len(ids) < 2:
        raise ValueError("need at least two tokens to measure perplexity")
    total, count, scored_to = 0.0, 0, 1  # token 0 has no context: never scored
    start = 0
    while scored_to < len(ids):
        end = min(start + window, len(ids))
        engine.reset()
        logits = engine.prefill(ids[start:end], all_logits=True)  # [end-start, V]
        first = max(scored_to, start + 1)  # positions [first, end) are new to this window
        logp = _log_softmax_at(logits[first - start - 1 : end - start - 1], ids[first:end])
        total -= float(logp.sum())
        count += end - first
        if progress:
            progress(end - scored_to)
        scored_to = end
        start = min(start + config.stride, max(end - 1, 0)) if end < len(ids) else end
    nll = total / count
    return PerplexityResult(math.exp(nll), nll, count)
