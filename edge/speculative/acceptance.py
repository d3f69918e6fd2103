"""Which drafted tokens the target keeps: those equal to its own choices.

`logits[i]` predicts the token after the i-th fed token (the fed tokens are the pending token
then the draft), so `logits[i]` judges draft token i. The target keeps the longest prefix of
the draft that equals its own choices and adds its own choice after it (the correction at the
first mismatch, or the bonus token after a fully accepted draft), so every verification pass
commits at least one token.

The target's choice at a position is `Sampler.choose`: the argmax when greedy, else Gumbel-max
over the processed logits with noise keyed by (seed, position). Both are deterministic functions
of the logits, the history and the position, the very function plain decoding applies at each
step, so the committed text is plain decoding's text token for token, whatever drafted it, how
many tokens it drafted or how the controller timed it, and sampled text follows the target's
distribution exactly. A drafted token is accepted with the probability that it equals the
target's sample; a draft model choosing with the same noise (`ModelDraft`, given the request's
seed) makes that likely wherever its distribution resembles the target's. (This replaces
rejection sampling, whose output depended on the draft and on how its random stream was
consumed, so neither a seed nor plain sampling could reproduce it.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.sampling import Sampler


def accept_draft(
    sampler: Sampler, logits: np.ndarray, draft: Sequence[int], history: Sequence[int]
) -> tuple[int, int]:
    """(number of draft tokens accepted, the target's next token). logits: [k+1, V];
    `history` is the whole sequence before the draft, so positions are absolute."""
    context = list(history)
    for i, token in enumerate(draft):
        choice = sampler.choose(logits[i], context, len(context))
        if choice != token:
            return i, choice
        context.append(token)
    return len(draft), sampler.choose(logits[len(draft)], context, len(context))
