"""Greedy speculative decoding emits exactly the target's own greedy tokens, whatever drafts.

Tiny random Llama and Qwen2 packages (tests/speculative/conftest.py) are the targets; drafts
are the target itself (every token accepted), another random model with the same tokenizer
(most tokens rejected), and prompt lookup. The real SmolLM2 shows lookup paying off on code
that repeats itself.

A caveat on exactness: verification runs k+1 tokens in one pass while plain decoding runs one,
so logits differ in summation order (~1e-6); an argmax tie that close would flip a token.
The seeded models here have no such tie, and a real one would show as a deterministic failure.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import edge
from edge.generate import GenerationConfig, GenerationResponse, stream_tokens
from edge.model import Model
from edge.speculative import LookupDraft, SpeculativeConfig

N = 48


def _run(
    model: Model, ids: list[int], max_tokens: int = N, **kwargs: Any
) -> tuple[list[int], list[GenerationResponse]]:
    responses = list(model.stream(ids, max_tokens=max_tokens, ignore_eos=True, **kwargs))
    return [r.token for r in responses], responses


def _fixed(k: int, **kwargs: Any) -> SpeculativeConfig:
    kwargs.setdefault("lookup_first", False)  # these tests are about the draft model
    return SpeculativeConfig(adaptive=False, draft_tokens=k, max_draft=max(k, 8), **kwargs)


@pytest.fixture(scope="module")
def plain(target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int]) -> list[int]:
    tokens, responses = _run(load_tiny(target), spec_prompt_ids)
    assert len(tokens) == N and responses[-1].speculation is None
    return tokens


@pytest.mark.parametrize("k", [1, 3, 8])
def test_self_draft_accepts_every_token(
    k: int,
    target: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
    plain: list[int],
) -> None:
    """The target drafting for itself: every draft token is accepted, each verification
    commits k+1 tokens, and the output is the plain greedy output."""
    model = load_tiny(target, draft=load_tiny(target), speculative=_fixed(k))
    tokens, responses = _run(model, spec_prompt_ids)
    assert tokens == plain
    stats = responses[-1].speculation
    assert stats.drafted > 0 and stats.acceptance == 1.0
    assert stats.tokens == N - 1  # the first token comes from the prompt's pass
    assert stats.tokens_per_pass > 1
    # accepted may exceed what was emitted when max_tokens ends the stream inside a round
    assert 0 < sum(r.from_draft for r in responses) <= stats.accepted
    assert stats.active


def test_other_model_draft_is_verified(
    target: Path,
    other: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
    plain: list[int],
) -> None:
    """A different random model drafts: many drafts are rejected, yet the output is the
    plain greedy output, also on a second request (prefix reuse in both caches)."""
    model = load_tiny(target, draft=load_tiny(other), speculative=_fixed(4))
    for _ in range(2):
        tokens, responses = _run(model, spec_prompt_ids)
        assert tokens == plain
        stats = responses[-1].speculation
        assert stats.drafted > 0 and stats.acceptance < 1.0


def test_lookup_draft(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int], plain: list[int]
) -> None:
    """Prompt lookup drafts (fixed and adaptive k): output equals plain greedy. (A random
    model does not copy its prompt, so here every lookup draft is rejected; SmolLM2 below
    accepts them.)"""
    for config in (_fixed(4), SpeculativeConfig()):
        model = load_tiny(target, draft=LookupDraft(), speculative=config)
        tokens, responses = _run(model, spec_prompt_ids)
        assert tokens == plain
        assert responses[-1].speculation.drafted > 0


def test_lookup_then_model_chain(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int], plain: list[int]
) -> None:
    """The default chain for a draft model: lookup first, the model where lookup finds no
    match. With the target as its own draft both sources draft (the model's every token
    accepted), the stats split them by source, and the output is plain greedy."""
    model = load_tiny(target, draft=load_tiny(target), speculative=_fixed(3, lookup_first=True))
    assert model.speculative.draft.name == "lookup+model"
    tokens, responses = _run(model, spec_prompt_ids)
    assert tokens == plain
    by_source = {
        name: (drafted, accepted) for name, drafted, accepted in responses[-1].speculation.by_source
    }
    assert set(by_source) == {"lookup", "model"}
    assert by_source["model"][0] > 0 and by_source["model"][0] == by_source["model"][1]


@pytest.mark.parametrize("draft_kind", ["other", "lookup"])
def test_repetition_penalty(
    draft_kind: str,
    target: Path,
    other: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
) -> None:
    """Greedy with repetition_penalty=1.3: verification applies the penalty over the history
    plus the accepted prefix, as plain decoding does at each step."""
    expected, _ = _run(load_tiny(target), spec_prompt_ids, repetition_penalty=1.3)
    draft = load_tiny(other) if draft_kind == "other" else LookupDraft()
    model = load_tiny(target, draft=draft, speculative=_fixed(4))
    tokens, responses = _run(model, spec_prompt_ids, repetition_penalty=1.3)
    assert tokens == expected
    assert responses[-1].speculation.target_passes < N


@pytest.mark.parametrize("draft_kind", ["self", "other"])
def test_parallel_lookahead(
    draft_kind: str,
    target: Path,
    other: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
    plain: list[int],
) -> None:
    """PEARL: the draft drafts ahead while the target verifies. With itself as draft every
    lookahead is used, with another model most are dropped; the output is plain greedy."""
    draft = load_tiny(target if draft_kind == "self" else other)
    model = load_tiny(target, draft=draft, speculative=_fixed(3, parallel=True))
    for _ in range(2):
        tokens, responses = _run(model, spec_prompt_ids)
        assert tokens == plain
        if draft_kind == "self":
            assert responses[-1].speculation.acceptance == 1.0
    model.speculative.close()


@pytest.mark.parametrize("draft_kind", ["self", "other"])
def test_adaptive_default_config(
    draft_kind: str,
    target: Path,
    other: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
    plain: list[int],
) -> None:
    """The default config (adaptive k, self-disabling): output equals plain greedy."""
    draft = load_tiny(target if draft_kind == "self" else other)
    model = load_tiny(target, draft=draft, speculative=SpeculativeConfig())
    tokens, responses = _run(model, spec_prompt_ids)
    assert tokens == plain
    assert responses[-1].speculation is not None


@pytest.mark.parametrize("draft_kind", ["self", "other", "lookup"])
def test_end_of_context_window(
    draft_kind: str,
    target: Path,
    other: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
) -> None:
    """A 20-token prompt in a 40-token window: drafts shrink to the room left, and the
    stream ends with "length" after exactly the tokens plain decoding gives."""
    expected, plain_responses = _run(load_tiny(target, max_context=40), spec_prompt_ids)
    assert plain_responses[-1].finish_reason == "length"
    assert len(expected) == 21  # the window's last slot is filled by the final token
    draft = {
        "self": lambda: load_tiny(target),
        "other": lambda: load_tiny(other),
        "lookup": LookupDraft,
    }[draft_kind]()
    model = load_tiny(target, max_context=40, draft=draft, speculative=_fixed(8))
    tokens, responses = _run(model, spec_prompt_ids)
    assert tokens == expected
    assert responses[-1].finish_reason == "length"
    assert [r.finish_reason for r in responses[:-1]] == [None] * 20


@pytest.fixture(scope="module")
def w8a8_target(target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exporters.export import ExportConfig, quantize_package

    return quantize_package(
        target, tmp_path_factory.mktemp("w8a8") / "pkg", ExportConfig(quant="w8a8"), progress=False
    )


@pytest.mark.parametrize("draft_kind", ["self", "other", "lookup"])
def test_w8a8_target_equals_its_plain_greedy(
    draft_kind: str,
    w8a8_target: Path,
    other: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
) -> None:
    """A w8a8 target (activations rounded to int8 per token, where a near-tie could flip
    with the step length) gives its plain greedy tokens with every kind of draft."""
    expected, _ = _run(load_tiny(w8a8_target), spec_prompt_ids)
    draft = {
        "self": lambda: load_tiny(w8a8_target),
        "other": lambda: load_tiny(other),
        "lookup": LookupDraft,
    }[draft_kind]()
    model = load_tiny(w8a8_target, draft=draft, speculative=_fixed(4))
    tokens, responses = _run(model, spec_prompt_ids)
    assert tokens == expected
    assert responses[-1].speculation.drafted > 0


def test_load_with_draft_path(
    target: Path, other: Path, spec_prompt_ids: list[int], plain: list[int]
) -> None:
    """edge.load(target, draft=<package path>, draft_threads=1) builds a model draft."""
    model = edge.load(
        str(target),
        draft=str(other),
        threads=1,
        draft_threads=1,
        progress=False,
        speculative=_fixed(2),
    )
    tokens, responses = _run(model, spec_prompt_ids)
    assert tokens == plain
    assert responses[-1].speculation.drafted > 0


# ---- the real SmolLM2 ----------------------------------------------------------------------------

# Code that repeats itself: greedy SmolLM2 continues it by copying ("config_beta" gets the
# keys of "config"), which is where prompt lookup drafts well.
CODE_PROMPT = (
    'config = {\n    "name": "alpha",\n    "size": 1,\n    "enabled": True,\n}\n'
    'config_beta = {\n    "name": "beta",\n'
)


def test_smollm2_lookup_on_repetitive_code(smollm2_package: Path) -> None:
    """SmolLM2-135M fp32 with draft="lookup" on code that repeats itself: 64 tokens equal to
    plain greedy (run on the same engine without speculation), with more than one token
    committed per target pass."""
    model = edge.load(
        str(smollm2_package),
        progress=False,
        max_context=256,
        draft="lookup",
        speculative=SpeculativeConfig(adaptive=False, draft_tokens=6),
    )
    ids = model.tokenizer.encode(CODE_PROMPT)
    expected = [
        r.token
        for r in stream_tokens(
            model.engine, model.tokenizer, ids, GenerationConfig(max_tokens=64, ignore_eos=True)
        )
    ]
    responses = list(model.stream(ids, max_tokens=64, ignore_eos=True))
    assert [r.token for r in responses] == expected
    stats = responses[-1].speculation
    assert stats.accepted > 0
    assert stats.tokens_per_pass > 1
