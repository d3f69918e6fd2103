"""Faults around speculative decoding: a draft that speaks another tokenizer is refused up
front, a draft that fails mid-generation costs speed but not tokens, bad settings are typed
errors naming the bad value."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

import edge
from edge.errors import ConfigError, EdgeError, TokenizerMismatchError
from edge.model import Model
from edge.package import open_package
from edge.speculative import Draft, LookupConfig, ModelDraft, SpeculativeConfig

N = 48


def _tokens(model: Model, ids: list[int]) -> tuple[list[int], Any]:
    responses = list(model.stream(ids, max_tokens=N, ignore_eos=True))
    return [r.token for r in responses], responses[-1]


# ---- a draft with another tokenizer -----------------------------------------------------------


def test_draft_with_another_tokenizer_is_refused(
    tiny_factory: Callable[..., Path], load_tiny: Callable[..., Model]
) -> None:
    """Model(target, draft=<model with another vocabulary>) raises TokenizerMismatchError
    (an EdgeError and ValueError) naming the draft; edge.load(draft=<path>) does too."""
    target = tiny_factory("llama", 0)
    foreign = tiny_factory("llama", 0, tokenizer="other")
    with pytest.raises(TokenizerMismatchError, match="does not share the tokenizer") as error:
        load_tiny(target, draft=load_tiny(foreign))
    assert isinstance(error.value, EdgeError) and isinstance(error.value, ValueError)
    assert str(foreign) in str(error.value)
    with pytest.raises(TokenizerMismatchError):
        edge.load(str(target), draft=str(foreign), threads=1, progress=False)


# ---- a draft that fails mid-generation ----------------------------------------------------------


class FailingDraft:
    """A DraftSource that drafts with the target's own weights and raises on call `fail_on`."""

    name = "failing"
    free = False

    def __init__(self, inner: ModelDraft, fail_on: int = 3) -> None:
        self.inner, self.fail_on, self.calls = inner, fail_on, 0

    def propose(self, history: Sequence[int], k: int) -> Draft:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("draft device lost")
        return self.inner.propose(history, k)

    def reset(self) -> None:
        self.inner.reset()


class FailingModelDraft(ModelDraft):
    """A ModelDraft (so parallel mode drafts ahead with it, on the draft thread) that raises on
    its 3rd proposal."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls = 0

    def propose(self, history: Sequence[int], k: int) -> Draft:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("draft device lost")
        return super().propose(history, k)


def test_failing_draft_falls_back_to_plain_decoding(
    target: Path,
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """propose() raises on its 3rd call: the request goes on with plain decoding, all 48
    tokens equal plain greedy, speculation reports inactive, the draft is not called again,
    and a warning names the failure."""
    expected, _ = _tokens(load_tiny(target), spec_prompt_ids)
    draft = FailingDraft(ModelDraft(load_tiny(target).engine))
    model = load_tiny(
        target, draft=draft, speculative=SpeculativeConfig(adaptive=False, draft_tokens=3)
    )
    with caplog.at_level(logging.WARNING, logger="edge.speculative"):
        tokens, last = _tokens(model, spec_prompt_ids)
    assert tokens == expected
    assert draft.calls == 3
    assert last.speculation.drafted == 6 and last.speculation.acceptance == 1.0
    assert last.speculation.active is False
    assert "draft device lost" in caplog.text


def test_failing_lookahead_falls_back_to_plain_decoding(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int]
) -> None:
    """Parallel mode: a failure raised on the draft thread (inside a lookahead) is caught
    the same way; the output is plain greedy and speculation reports inactive."""
    expected, _ = _tokens(load_tiny(target), spec_prompt_ids)
    draft = FailingModelDraft(load_tiny(target).engine)
    model = load_tiny(
        target,
        draft=draft,
        speculative=SpeculativeConfig(adaptive=False, draft_tokens=3, parallel=True),
    )
    tokens, last = _tokens(model, spec_prompt_ids)
    assert tokens == expected
    assert last.speculation.active is False
    model.speculative.close()


def test_close_cancels_a_lookahead_not_started(
    target: Path, load_tiny: Callable[..., Model]
) -> None:
    """A lookahead still queued when the decoder drops it is cancelled, not waited for, and
    dropping it raises nothing (white-box: the draft thread is held busy on purpose)."""
    draft = ModelDraft(load_tiny(target).engine)
    model = load_tiny(target, draft=draft, speculative=SpeculativeConfig(parallel=True))
    decoder = model.speculative
    gate = threading.Event()
    busy = decoder._pool.submit(gate.wait, 10)  # the single draft thread is occupied
    decoder.draft_ahead([5, 6, 7], 2)
    future = decoder._ahead[1]
    decoder._drop_lookahead()
    assert future.cancelled()
    gate.set()
    busy.result()
    decoder.close()


# ---- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        (dict(max_draft=0), "max_draft=0"),
        (dict(max_draft=65), "max_draft=65"),
        (dict(draft_tokens=0), "draft_tokens=0"),
        (dict(draft_tokens=13), "draft_tokens=13"),  # above the default max_draft of 12
        (dict(draft_tokens=5, max_draft=4), "draft_tokens=5"),
        (dict(probe_every=0), "probe_every=0"),
        (dict(smoothing=0.0), "smoothing=0.0"),
        (dict(smoothing=1.5), "smoothing=1.5"),
    ],
)
def test_speculative_config_rejects_bad_values(kwargs: dict[str, Any], named: str) -> None:
    """Out-of-range SpeculativeConfig fields raise ConfigError naming the value."""
    with pytest.raises(ConfigError, match=named):
        SpeculativeConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(min_ngram=0), dict(min_ngram=3, max_ngram=2)])
def test_lookup_config_rejects_bad_values(kwargs: dict[str, int]) -> None:
    """LookupConfig needs 1 <= min_ngram <= max_ngram."""
    with pytest.raises(ConfigError, match="min_ngram"):
        LookupConfig(**kwargs)


def test_parallel_on_shared_cores_drafts_sequentially(
    target: Path, load_tiny: Callable[..., Model], caplog: pytest.LogCaptureFixture
) -> None:
    """parallel=True with target and draft threads adding up to more CPUs than the process
    may use: overlapping would only slow verification, so the decoder drafts sequentially and
    says why; with threads that fit, parallel stays on."""
    from edge.engine import EngineConfig
    from edge.speculative.decoder import usable_cpus

    crowded = Model(
        open_package(target),
        EngineConfig(threads=usable_cpus()),
        draft=load_tiny(target),
        speculative=SpeculativeConfig(parallel=True),
    )
    assert crowded.speculative.config.parallel is False
    assert "parallel drafting needs cores of its own" in caplog.text
    if usable_cpus() >= 2:
        fits = load_tiny(
            target, draft=load_tiny(target), speculative=SpeculativeConfig(parallel=True)
        )
        assert fits.speculative.config.parallel is True
