"""Perplexity on real text with a sliding window: how much quality a package keeps."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from edge.engine import Engine

if TYPE_CHECKING:
    from edge.tokenizer import Tokenizer


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


def lead_ids(tokenizer: Tokenizer) -> list[int]:
    """The special tokens `tokenizer` puts before any text (Gemma: [<bos>]; SmolLM2, Qwen2.5:
    none). A model trained to always see them first is scored and calibrated with them (as
    llama.cpp's perplexity does): Gemma without `<bos>` parks its attention sink on an ordinary
    token, and its perplexity measures that accident rather than the model."""
    plain = tokenizer.encode("a", add_special_tokens=False)
    marked = tokenizer.encode("a", add_special_tokens=True)
    return marked[: marked.index(plain[0])] if plain and plain[0] in marked else []


def _log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    # logits: [T, V] float32; per-row logsumexp in float64 for a stable sum over 150k entries
    peak = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - peak).sum(axis=1, dtype=np.float64)) + peak[:, 0]
    return logits[np.arange(len(targets)), targets] - lse


def kl_per_position(reference: np.ndarray, other: np.ndarray) -> np.ndarray:
    """KL(reference || other) of the next-token distributions at each position, in nats:
    how far a quantized package's logits move from its float32 reference's (rows [..., V])."""

    def log_softmax(x: np.ndarray) -> np.ndarray:
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    p = log_softmax(reference)
    return (np.exp(p) * (p - log_softmax(other))).sum(-1)


def perplexity(
    engine: Engine,
    tokens: list[int],
    config: PerplexityConfig | None = None,
    progress: Callable[[int], None] | None = None,
    lead: Sequence[int] = (),
) -> PerplexityResult:
    """Perplexity of `tokens` under the engine's model (sliding window, see PerplexityConfig).
    `lead` (`lead_ids`) goes before every window and is never scored: the same tokens are
    scored with it or without it."""
    config = config or PerplexityConfig()
    ids = np.asarray(tokens[: config.max_tokens] if config.max_tokens else tokens, np.int64)
    head = np.asarray(lead, np.int64)
    window = min(config.window, engine.max_context - len(head))
    if len(ids) < 2:
        raise ValueError("need at least two tokens to measure perplexity")
    total, count, scored_to = 0.0, 0, 1  # token 0 has no context: never scored
    start = 0
    while scored_to < len(ids):
        end = min(start + window, len(ids))
        engine.reset()
        step = np.concatenate([head, ids[start:end]])
        logits = engine.prefill(step, all_logits=True)[len(head) :]  # [end-start, V]
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
