"""Speculative decoding on a streamed target: verification runs several tokens through the
sliding window in one step and rolls the KV cache back past rejected drafts, and greedy output
must stay exactly that of plain streamed decoding."""

from __future__ import annotations

from pathlib import Path

from edge.package import open_package
from edge.speculative import LookupDraft
from edge.streaming import streamed_state

# Repetitive text, so prompt lookup finds n-grams to draft from and drafts get accepted.
PROMPT = "1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2, 3, 4, 5, 1, 2"


def test_streaming_lookup_draft_greedy_equals_plain(
    streaming_int4_package: Path, streaming
) -> None:
    """SmolLM2 int4 streamed through a window of two: `Model(pkg, StreamConfig(...),
    draft=LookupDraft())` yields the plain streamed run's 24 greedy tokens, with drafts
    proposed and accepted (so multi-token verification and rewind ran on the streamed
    engine), in fewer target steps than tokens."""
    package = open_package(streaming_int4_package)
    minimum = streaming.minimum_budget(package)
    budget = minimum + 2 * streaming.stream_plan(package, minimum).unit_bytes
    with streaming.streamed_model(streaming_int4_package, budget) as model:
        state = streamed_state(model.engine)
        assert state.plan.policy.window >= 2 and state.prefetcher is not None
        plain = streaming.greedy_tokens(model, PROMPT)
    with streaming.streamed_model(streaming_int4_package, budget, draft=LookupDraft()) as model:
        responses = list(model.stream(PROMPT, max_tokens=streaming.GREEDY_TOKENS, ignore_eos=True))
        steps = len(streamed_state(model.engine).stats.steps)
    assert [r.token for r in responses] == plain
    stats = responses[-1].speculation
    assert stats is not None and stats.drafted > 0 and stats.accepted > 0, stats
    assert any(r.from_draft for r in responses)
    assert steps < len(plain)


def test_a_budget_drafts_from_lookup_unless_told_none(
    streaming_int4_package: Path, streaming
) -> None:
    """`edge.load(memory_budget=...)` drafts from lookup by default (a streamed pass costs the
    same however many tokens it verifies, and lookup takes no memory); `draft="none"` decodes
    one token a pass; both give the same greedy text."""
    import edge

    package = open_package(streaming_int4_package)
    budget = (
        streaming.minimum_budget(package)
        + 2 * streaming.stream_plan(package, streaming.minimum_budget(package)).unit_bytes
    )
    texts = {}
    for draft in (None, "none"):
        model = edge.load(
            streaming_int4_package,
            memory_budget=budget,
            max_context=streaming.MAX_CONTEXT,
            draft=draft,
            progress=False,
            verify="sizes",
        )
        try:
            assert streamed_state(model.engine) is not None
            drafting = model.speculative is not None
            assert drafting == (draft is None)
            if drafting:
                assert isinstance(model.speculative.draft, LookupDraft)
            texts[draft] = streaming.greedy_tokens(model, PROMPT)
        finally:
            model.engine.close()
    assert texts[None] == texts["none"]
