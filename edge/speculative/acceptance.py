"""Which drafted tokens the target keeps: the greedy rule and the rejection-sampling rule.

Both read the target's logits for every fed position: `logits[i]` predicts the token after
the i-th fed token, so `logits[i]` judges draft token i (the fed tokens are the pending token
then the draft). Both return the accepted prefix and the one token the target itself adds
(the correction at the first rejection, or the bonus after a fully accepted draft), so every
verification pass commits at least one token.

Greedy: accept while the draft equals the target's own choice, so the output is the target's
greedy output token for token. Sampling (Leviathan et al. 2023, Chen et al. 2023): accept token
x with probability min(1, p(x)/q(x)); on rejection draw from max(0, p - q) renormalized. The
committed tokens are then distributed exactly as the target's own samples.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.sampling import Sampler


def accept_greedy(sampler: Sampler, logits: np.ndarray, draft: Sequence[int],
                  history: Sequence[int]) -> tuple[int, int]:
    """(number of draft tokens accepted, the target's next token). logits: [k+1, V]."""
    context = list(history)
    for i, token in enumerate(draft):
        choice = sampler.choose(logits[i], context)
        if choice != token:
            return i, choice
        context.append(token)
    return len(draft), sampler.choose(logits[len(draft)], context)


def accept_sampled(sampler: Sampler, logits: np.ndarray, draft: Sequence[int],
                   draft_distributions: Sequence[tuple[np.ndarray, np.ndarray]] | None,
                   history: Sequence[int]) -> tuple[int, int]:
    """Rejection sampling; `draft_distributions` None means deterministic (one-hot) drafts."""
    context = list(history)
    for i, token in enumerate(draft):
        ids, p = sampler.distribution(logits[i], context)
        q_ids, q = (draft_distributions[i] if draft_distributions is not None
                    else (np.array([token]), np.ones(1)))
        p_x, q_x = _prob_of(ids, p, token), _prob_of(q_ids, q, token)
        if q_x > 0 and sampler.uniform() * q_x < p_x:  # u < p/q without dividing
            context.append(token)
            continue
        return i, _draw_residual(sampler, ids, p, q_ids, q)
    ids, p = sampler.distribution(logits[len(draft)], context)
    return len(draft), sampler.draw(ids, p)


def _prob_of(ids: np.ndarray, probs: np.ndarray, token: int) -> float:
    hit = np.flatnonzero(ids == token)
    return float(probs[hit[0]]) if hit.size else 0.0


def _draw_residual(sampler: Sampler, ids: np.ndarray, p: np.ndarray, q_ids: np.ndarray,
                   q: np.ndarray) -> int:
    """A token from max(0, p - q), renormalized (dense over token ids: no per-token loops)."""
    size = int(max(ids.max(), q_ids.max())) + 1
    residual = np.zeros(size)
    residual[ids] = p
    residual[q_ids] -= q
    np.maximum(residual, 0.0, out=residual)
    support = np.flatnonzero(residual)
    if support.size == 0:  # p == q exactly: the rejection had probability 0; draw from p
        return sampler.draw(ids, p)
    weights = residual[support]
    return sampler.draw(support, weights / weights.sum())
