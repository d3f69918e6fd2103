"""LookupDraft (prompt lookup): proposes what followed the latest earlier occurrence of the
history's last n-gram, trying the longest n-gram first; nothing when there is no match; and
an index that follows the history, rebuilt when a new conversation diverges from it."""

from __future__ import annotations

from edge.speculative import LookupConfig, LookupDraft


def _propose(history: list[int], k: int = 4, draft: LookupDraft | None = None) -> list[int]:
    return (draft or LookupDraft()).propose(history, k).tokens


def test_proposes_continuation_of_latest_match() -> None:
    """The suffix (1, 2) occurred twice before: the latest occurrence's continuation wins."""
    assert _propose([1, 2, 3, 1, 2, 4, 5, 1, 2], k=3) == [4, 5, 1]


def test_longest_ngram_first() -> None:
    """The 1-gram (7) last occurred before 9, but the 3-gram (5, 6, 7) before 8: 8 wins."""
    history = [5, 6, 7, 8, 0, 7, 9, 5, 6, 7]
    assert _propose(history, k=2) == [8, 0]
    shorter = LookupDraft(LookupConfig(max_ngram=1))
    assert _propose(history, k=2, draft=shorter) == [9, 5]


def test_proposal_is_capped_at_k_and_at_the_history() -> None:
    """At most k tokens, fewer when the match is near the end of the history."""
    assert _propose([1, 2, 3, 4, 5, 1], k=2) == [2, 3]
    assert _propose([3, 4, 3], k=8) == [4, 3]


def test_no_match_no_proposal() -> None:
    """A last token never seen before, or too short a history: an empty draft."""
    assert _propose([1, 2, 3, 4]) == []
    assert _propose([7]) == []
    assert _propose([1, 2, 1], draft=LookupDraft(LookupConfig(min_ngram=2))) == []


def test_growing_history_extends_the_index() -> None:
    """Proposals on a growing history equal those of a fresh index on the same history."""
    history = [4, 8, 15, 16, 23, 42, 4, 8, 15, 16, 23, 4, 8, 42, 15]
    incremental = LookupDraft()
    for end in range(1, len(history) + 1):
        assert incremental.propose(history[:end], 3).tokens == _propose(history[:end], k=3)


def test_diverging_history_rebuilds_the_index() -> None:
    """A new conversation sharing only a prefix with the old one: n-grams of the old text
    are forgotten, so nothing stale is proposed."""
    draft = LookupDraft()
    assert draft.propose([9, 1, 2, 3, 7, 1, 2], 2).tokens == [3, 7]
    assert draft.propose([9, 5, 6, 1, 2], 2).tokens == []  # (1, 2) -> 3 was the old text's
    assert draft.propose([9, 5, 6, 1, 2, 5], 2).tokens == [6, 1]
    assert draft.propose([9, 5], 2).tokens == []  # a prefix of the old history: rebuilt too


def test_draft_kind_names_the_matched_ngram() -> None:
    """Each proposal says how long a suffix matched ("ngram3"): the controller keeps acceptance
    per kind, since longer matches are right more often."""
    draft = LookupDraft()
    assert draft.propose([1, 2, 3, 9, 1, 2, 3], 2).key == "ngram3"
    assert draft.propose([5, 6, 7, 5], 2).key == "ngram1"
    assert draft.propose([5, 6, 7], 2).key == "ngram0"
    assert LookupDraft.free and draft.propose([5, 6, 5], 2).source == "lookup"
