"""Honest accounting: the speedup a response reports is measured (its own time against plain
steps this process timed), agrees with wall clocks, and a draft that loses switches itself off.

Issue 19's case: `edge run --draft` starts from what earlier processes measured, and a plain
step remembered from one that ran under other load (a build on the same 2 cores) was trusted:
too slow, it made every draft look like a win, so the draft stayed on and plain decoding was
never timed again, and the speedup reported against it was 3x the real one. Each decoder here
starts from such a memory (STALE).

What is tested is the accounting, not the models, so costs are set with sleeps where that makes
the cases clear and the clocks steady on a shared machine: a tiny target whose every pass takes
STEP longer (one token or k, as memory-bound decoding roughly does), and a draft model that
takes longer per drafted token than the target's pass, which is the real boundary of a draft
model much bigger than its target or on a slow device. The real SmolLM2 with prompt lookup on
code that repeats itself is checked too, with nothing simulated.

Plain and speculative runs alternate and medians are compared, with bounds loose enough for a
busy machine and tight enough to catch an overstatement like issue 19's 3x.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.cli.run import speculation_line
from edge.generate import (
    GenerationConfig,
    GenerationResponse,
    SpeculationStats,
    stream_tokens,
)
from edge.model import Model
from edge.runner import Runner
from edge.speculative import (
    Draft,
    DraftSource,
    LookupDraft,
    ModelDraft,
    SpeculativeConfig,
    SpeculativeDecoder,
)
from edge.speculative.calibration import Calibration

N = 64
STEP = 0.002  # seconds every target pass takes on top of the tiny model's
STALE = Calibration(plain_step=4 * STEP)  # remembered from a process under 4x the load
TOLERANCE = 1.4  # reported / timed speedup within [1 / TOLERANCE, TOLERANCE]
RUNS = 3

Stream = Callable[[], Iterator[GenerationResponse]]


class SlowTarget:
    """A target whose every pass (decode or verify) takes STEP longer."""

    def __init__(self, engine: Runner) -> None:
        self.engine = engine

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)

    def decode(self, token_id: int) -> np.ndarray:
        time.sleep(STEP)
        return self.engine.decode(token_id)

    def verify(self, token_ids: Sequence[int]) -> np.ndarray:
        time.sleep(STEP)
        return self.engine.verify(token_ids)


class SlowDraft(ModelDraft):
    """A draft model that takes 32 target passes per drafted token: with every token
    accepted a round of k still costs far more than the k + 1 plain steps it saves, so the
    one round it runs before switching off shows in the response's clock (a loss of more
    than half the response; at two, four and eight passes, ~2%, ~15% and ~35%, CI's load
    made the plain step it is measured against read slow enough to report 1.03, 1.02 and
    1.03)."""

    def propose(self, history: Sequence[int], k: int) -> Draft:
        time.sleep(32 * STEP * k)
        return super().propose(history, k)


def _timed(stream: Stream) -> tuple[list[GenerationResponse], float]:
    """A run's responses and its tokens/s after the first (the prompt's pass gives the first,
    alike in both)."""
    responses = stream()
    out = [next(responses)]
    started = time.perf_counter()
    out.extend(responses)
    return out, (len(out) - 1) / (time.perf_counter() - started)


def _compare(plain: Stream, speculative: Stream) -> list[list[GenerationResponse]]:
    """Plain and speculative runs in turn; the speculative runs' responses, after checking
    that each is plain greedy's text and that the median speedup reported is the median
    timed one within TOLERANCE."""
    runs, spec_rates, plain_rates = [], [], []
    for _ in range(RUNS):
        expected, rate = _timed(plain)
        plain_rates.append(rate)
        responses, rate = _timed(speculative)
        assert [r.token for r in responses] == [r.token for r in expected]
        runs.append(responses)
        spec_rates.append(rate)
    reported = statistics.median(r[-1].speculation.speedup for r in runs)
    timed = statistics.median(spec_rates) / statistics.median(plain_rates)
    assert 1 / TOLERANCE < reported / timed < TOLERANCE, (reported, timed)
    return runs


def _streams(
    target: Path, load_tiny: Callable[..., Model], ids: list[int], draft: Callable[[], DraftSource]
) -> tuple[Stream, Stream]:
    """(plain, speculative) greedy streams of N tokens over one slowed target engine; each
    speculative run gets a new decoder starting from the STALE memory, as a new process
    would."""
    model = load_tiny(target)
    slow, tokenizer = SlowTarget(model.engine), model.tokenizer
    config = GenerationConfig(max_tokens=N, ignore_eos=True)

    def plain() -> Iterator[GenerationResponse]:
        return stream_tokens(slow, tokenizer, ids, config)

    def speculative() -> Iterator[GenerationResponse]:
        decoder = SpeculativeDecoder(slow, draft(), SpeculativeConfig())
        decoder.controller.restore(STALE)
        return decoder.stream(tokenizer, ids, config)

    return plain, speculative


def test_a_slow_draft_reports_its_loss_and_switches_itself_off(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int]
) -> None:
    """A draft model slower than the target, every token of it accepted: the response reports
    a speedup below 1 that the clock confirms, the draft ends switched off, and the second
    half of the tokens is decoded plainly but for a probe. Output: plain greedy's."""
    engine = load_tiny(target).engine
    plain, speculative = _streams(target, load_tiny, spec_prompt_ids, lambda: SlowDraft(engine))
    for responses in _compare(plain, speculative):
        last, middle = responses[-1].speculation, responses[N // 2].speculation
        assert last.drafted > 0 and last.acceptance == 1.0
        assert last.speedup < 1
        assert last.active is False
        assert last.drafted - middle.drafted <= 2  # a probe of k = 1, maybe two
        assert last.target_passes - middle.target_passes >= 0.9 * (last.tokens - middle.tokens)


def test_a_winning_draft_reports_what_the_clock_measures(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int]
) -> None:
    """The tiny model drafting for its slowed self (a fast draft, every token accepted): a
    speedup well above 1, reported as the clock measures it, and plain greedy's output."""
    engine = load_tiny(target).engine
    plain, speculative = _streams(target, load_tiny, spec_prompt_ids, lambda: ModelDraft(engine))
    for responses in _compare(plain, speculative):
        assert responses[-1].speculation.speedup > 1.5
        assert responses[-1].speculation.active


def test_no_speedup_is_reported_before_this_process_timed_a_plain_step(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int]
) -> None:
    """A plain step remembered from another process (here: one under heavy load) is not
    compared with: the first token reports None, the first step after it is a plain one that
    replaces the remembered value, and the speedups after it are measured ones."""
    model = load_tiny(target, draft=load_tiny(target), speculative=SpeculativeConfig())
    controller = model.speculative.controller
    controller.restore(Calibration(plain_step=1.0))
    responses = list(model.stream(spec_prompt_ids, max_tokens=8, ignore_eos=True))
    assert responses[0].speculation.speedup is None
    second = responses[1].speculation
    assert second.drafted == 0 and second.target_passes == 1  # the measuring step
    assert controller.plain_measured >= 1 and controller.plain_step.value < 0.1
    assert all(r.speculation.speedup is not None for r in responses[1:])


# Code that repeats itself: greedy SmolLM2 continues it by copying, where lookup drafts well.
CODE_PROMPT = (
    'config = {\n    "name": "alpha",\n    "size": 1,\n    "enabled": True,\n}\n'
    'config_beta = {\n    "name": "beta",\n'
)


@pytest.mark.slow
def test_real_lookup_reports_what_the_clock_measures(
    smollm2_package: Path, load_tiny: Callable[..., Model]
) -> None:
    """SmolLM2-135M with lookup drafts on code that repeats itself, nothing simulated: it wins,
    reports the speedup the clock measures, and gives plain greedy's output (slow: in CI the
    same accounting runs on drafts of a set speed: the winning and losing draft tests)."""
    plain = load_tiny(smollm2_package, max_context=256)
    model = load_tiny(smollm2_package, max_context=256, draft=LookupDraft())
    ids = model.tokenizer.encode(CODE_PROMPT)
    runs = _compare(
        lambda: plain.stream(ids, max_tokens=N, ignore_eos=True),
        lambda: model.stream(ids, max_tokens=N, ignore_eos=True),
    )
    assert statistics.median(r[-1].speculation.speedup for r in runs) > 1
    assert all(r[-1].speculation.tokens_per_pass > 1 for r in runs)


def test_the_stats_line_says_measured_or_not_measured() -> None:
    """`edge run --stats` prints the measured speedup, or says it is not measured yet rather
    than printing a number."""
    stats = SpeculationStats(8, 6, 4, 10, 0.78, False)
    assert "0.78x plain decoding (measured) (switched itself off)" in speculation_line(stats)
    unknown = speculation_line(replace(stats, speedup=None, active=True))
    assert unknown.endswith("speed against plain decoding not measured yet")
