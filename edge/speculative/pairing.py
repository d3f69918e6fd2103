"""A draft model must speak the target's tokens: the same ids for the same strings."""

from __future__ import annotations

from edge.errors import TokenizerMismatchError
from edge.tokenizer import Tokenizer


def check_same_tokenizer(
    target: Tokenizer, draft: Tokenizer, target_name: str = "target", draft_name: str = "draft"
) -> None:
    """Raise `TokenizerMismatchError` naming the first difference; ids are what is compared,
    since a draft's token 42 is only worth verifying if it means the target's token 42."""
    t_vocab, d_vocab = target.vocab(), draft.vocab()
    if t_vocab == d_vocab:
        return
    only_draft = sorted(set(d_vocab) - set(t_vocab))[:3]
    only_target = sorted(set(t_vocab) - set(d_vocab))[:3]
    moved = sorted(s for s in set(t_vocab) & set(d_vocab) if t_vocab[s] != d_vocab[s])[:3]
    raise TokenizerMismatchError(
        f"the draft {draft_name} does not share the tokenizer of {target_name} "
        f"({len(d_vocab)} vs {len(t_vocab)} tokens; only in the draft: {only_draft}, only in "
        f"the target: {only_target}, different ids: {moved}); pick a draft from the same "
        "model family, or draft='lookup'"
    )
