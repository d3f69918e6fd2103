"""A seed fixes the sampled text, with or without a draft.

Each position's sampling noise is keyed by (seed, absolute position), and verification keeps
only drafted tokens equal to the target's own choice under that noise, so the text sampled with
any draft, any k, adaptive or not, after any calibration, equals plain sampling's with the same
seed. A draft model chooses with the same noise, which makes it agree with the target: the
target drafting for itself has every token accepted, even with no seed given.

Tiny random Llama and Qwen2 packages (conftest.py) are the targets; a random model copies
nothing from its prompt, so prompt lookup's drafts are rejected there, and the real SmolLM2 on
code that repeats itself shows them accepted.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import edge
from edge.generate import GenerationConfig, stream_tokens
from edge.model import Model
from edge.sampling import SamplingConfig
from edge.speculative import LookupDraft, SpeculativeConfig

N = 48
SAMPLING: dict[str, Any] = dict(temperature=0.8, top_p=0.9, seed=1)


def _tokens(model: Model, ids: list[int], max_tokens: int = N, **sampling: Any) -> list[int]:
    sampling = {**SAMPLING, **sampling}
    return [r.token for r in model.stream(ids, max_tokens=max_tokens, ignore_eos=True, **sampling)]


def _fixed(k: int, **kwargs: Any) -> SpeculativeConfig:
    kwargs.setdefault("lookup_first", False)
    return SpeculativeConfig(adaptive=False, draft_tokens=k, max_draft=max(k, 8), **kwargs)


@pytest.fixture(scope="module")
def plain(target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int]) -> list[int]:
    """Plain sampling's tokens with SAMPLING."""
    return _tokens(load_tiny(target), spec_prompt_ids)


def test_seeded_sampling_varies_with_the_seed(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int], plain: list[int]
) -> None:
    """Control: the text below is really sampled (another seed, another text)."""
    assert _tokens(load_tiny(target), spec_prompt_ids, seed=2) != plain
    assert len(set(plain)) > 10


def test_lookup_draft_is_reproducible_and_plain(
    target: Path,
    spec_prompt_ids: list[int],
    plain: list[int],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The issue's case: edge.load(draft="lookup") three times, each load reading the
    calibration the previous one saved (so the first drafts, and the later ones, having
    learned that lookup loses here, hardly do), the adaptive k following timings: the same
    tokens each time, plain sampling's, and the same text as the plain model generates."""
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path))
    runs, texts, drafted = [], [], []
    for _ in range(3):
        model = edge.load(str(target), draft="lookup", threads=1, progress=False)
        responses = list(model.stream(spec_prompt_ids, max_tokens=N, ignore_eos=True, **SAMPLING))
        runs.append([r.token for r in responses])
        drafted.append(responses[-1].speculation.drafted)
        texts.append(model.generate(spec_prompt_ids, max_tokens=N, ignore_eos=True, **SAMPLING))
    assert runs == [plain] * 3
    assert drafted[0] > 0
    plain_model = edge.load(str(target), threads=1, progress=False)
    assert (
        texts
        == [plain_model.generate(spec_prompt_ids, max_tokens=N, ignore_eos=True, **SAMPLING)] * 3
    )


@pytest.mark.parametrize(
    "config",
    [
        _fixed(1, lookup_first=True),
        _fixed(2),
        _fixed(5),
        _fixed(12),
        SpeculativeConfig(),
        SpeculativeConfig(draft_tokens=1, max_draft=3, smoothing=1.0),
    ],
    ids=["k1", "k2", "k5", "k12", "adaptive", "adaptive-small"],
)
@pytest.mark.parametrize("draft_kind", ["lookup", "other"])
def test_k_does_not_change_the_text(
    config: SpeculativeConfig,
    draft_kind: str,
    target: Path,
    other: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
    plain: list[int],
) -> None:
    """Any k, fixed or adaptive, with lookup or another model drafting: plain's text, also on
    a second request (whose controller starts from what the first one measured)."""
    draft = LookupDraft() if draft_kind == "lookup" else load_tiny(other)
    model = load_tiny(target, draft=draft, speculative=config)
    for _ in range(2):
        assert _tokens(model, spec_prompt_ids) == plain


@pytest.mark.parametrize("parallel", [False, True])
def test_self_draft_is_coupled(
    parallel: bool,
    target: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
    plain: list[int],
) -> None:
    """The target drafting for itself chooses with the target's noise, so it drafts the
    target's samples: every token accepted (near-ties of the one- and multi-token passes
    aside), and the text is plain's. With seed None the drafted seed is the one the request
    drew, so the coupling holds too."""
    model = load_tiny(target, draft=load_tiny(target), speculative=_fixed(3, parallel=parallel))
    for seed in (1, None):
        responses = list(
            model.stream(
                spec_prompt_ids, max_tokens=N, ignore_eos=True, **{**SAMPLING, "seed": seed}
            )
        )
        if seed is not None:
            assert [r.token for r in responses] == plain
        stats = responses[-1].speculation
        assert stats.drafted > 0 and stats.acceptance > 0.95
    model.speculative.close()


def test_seed_none_is_fresh_per_request(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int]
) -> None:
    """No seed: each request draws its own, with or without a draft."""
    model = load_tiny(target, draft=LookupDraft(), speculative=_fixed(4, lookup_first=True))
    assert _tokens(model, spec_prompt_ids, seed=None) != _tokens(model, spec_prompt_ids, seed=None)


@pytest.mark.parametrize("draft_kind", ["none", "lookup", "other"])
def test_positions_are_absolute(
    draft_kind: str,
    target: Path,
    other: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
    plain: list[int],
) -> None:
    """Stopping after 20 tokens and going on from the prompt plus those 20 (a restart, or the
    next turn) samples the same 28 tokens that follow in one go: the noise is keyed by the
    position in the sequence, not in the request."""
    draft = {"none": None, "lookup": LookupDraft(), "other": None}[draft_kind]
    if draft_kind == "other":
        draft = load_tiny(other)
    model = load_tiny(target, draft=draft, speculative=_fixed(4) if draft else None)
    head = _tokens(model, spec_prompt_ids, max_tokens=20)
    tail = _tokens(model, spec_prompt_ids + head, max_tokens=N - 20)
    assert head + tail == plain


@pytest.mark.parametrize(
    "sampling", [dict(top_k=20, min_p=0.05), dict(repetition_penalty=1.3, temperature=1.2)]
)
def test_other_filters(
    sampling: dict[str, Any],
    target: Path,
    other: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
) -> None:
    """top-k, min-p and the repetition penalty (over the history plus the accepted prefix)
    are applied by verification as by plain sampling."""
    expected = _tokens(load_tiny(target), spec_prompt_ids, **sampling)
    for draft in (LookupDraft(), load_tiny(other), load_tiny(target)):
        model = load_tiny(target, draft=draft, speculative=_fixed(4, lookup_first=True))
        assert _tokens(model, spec_prompt_ids, **sampling) == expected


# ---- the real SmolLM2 ----------------------------------------------------------------------------

CODE_PROMPT = (
    'config = {\n    "name": "alpha",\n    "size": 1,\n    "enabled": True,\n}\n'
    'config_beta = {\n    "name": "beta",\n'
)


def test_smollm2_sampled_lookup_equals_plain(
    smollm2_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SmolLM2-135M sampling (temperature 0.8, top-p 0.9, seed 1) on code that repeats itself,
    with draft="lookup" at a fixed k and at the adaptive one: lookup drafts are accepted, and
    the 64 tokens are plain sampling's (on the same engine without speculation)."""
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path))  # the adaptive run saves calibration
    config = GenerationConfig(max_tokens=64, ignore_eos=True, sampling=SamplingConfig(**SAMPLING))
    expected: list[int] = []
    for speculative in (SpeculativeConfig(adaptive=False, draft_tokens=6), SpeculativeConfig()):
        model = edge.load(
            str(smollm2_package),
            progress=False,
            max_context=256,
            draft="lookup",
            speculative=speculative,
        )
        ids = model.tokenizer.encode(CODE_PROMPT)
        if not expected:
            expected = [r.token for r in stream_tokens(model.engine, model.tokenizer, ids, config)]
        responses = list(model.stream(ids, max_tokens=64, ignore_eos=True, **SAMPLING))
        assert [r.token for r in responses] == expected
        assert responses[-1].speculation.accepted > 0
