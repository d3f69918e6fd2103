"""int4 packages at ONNX Runtime's accuracy_level 4 round activations to int8 on one path for
a one-token step and on another for several, so a verification pass and plain decoding differ
by a fraction of a logit. With `EngineConfig.uniform_steps` (`edge.load(exact=True)`, `--exact`)
every step takes at least two tokens and the logits of a token no longer depend on how many
share its step: speculative output equals plain output bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from bench.bench_uniform_steps import plain_and_verified
from edge.engine import Engine, EngineConfig
from edge.model import Model
from edge.package import open_package
from edge.speculative import SpeculativeConfig
from exporters.export import ExportConfig, quantize_package

N = 32


@pytest.fixture(scope="module")
def int4_target(target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return quantize_package(
        target,
        tmp_path_factory.mktemp("int4") / "pkg",
        ExportConfig(quant="int4", accuracy_level=4),
        progress=False,
    )


def test_uniform_steps_make_a_pass_of_k_equal_k_steps(
    int4_target: Path, spec_prompt_ids: list[int]
) -> None:
    """Without uniform steps the two paths differ (the rounding this option exists for); with
    them, every logit is equal, for several k."""
    ids = spec_prompt_ids
    rounding = Engine(open_package(int4_target), EngineConfig(threads=1, max_context=64))
    assert rounding.rounds_by_step()
    plain, verified = plain_and_verified(rounding, ids, 4)
    assert not np.array_equal(plain, verified)

    config = EngineConfig(threads=1, max_context=64, uniform_steps=True)
    exact = Engine(open_package(int4_target), config)
    assert exact.min_step == 2 and not exact.rounds_by_step()
    for k in (2, 3, 5):
        plain, verified = plain_and_verified(exact, ids, k)
        np.testing.assert_array_equal(plain, verified)


def test_exact_speculation_equals_exact_plain_decoding(
    int4_target: Path, spec_prompt_ids: list[int], load_tiny: Callable[..., Model]
) -> None:
    """`edge.load(exact=True)` with the target drafting for itself (every draft accepted, so
    nearly every token comes from a verification pass) gives the exact plain run's tokens with
    equal logprobs (each the log-softmax of the raw logits at the token)."""
    import edge

    def run(**kwargs: object) -> list[tuple[int, float]]:
        model = edge.load(int4_target, threads=1, max_context=64, progress=False, **kwargs)
        out = model.stream(spec_prompt_ids, max_tokens=N, ignore_eos=True)
        return [(r.token, r.logprob) for r in out]

    plain = run(exact=True)
    drafted = run(
        exact=True,
        draft=load_tiny(int4_target),
        speculative=SpeculativeConfig(adaptive=False, draft_tokens=4, lookup_first=False),
    )
    assert drafted == plain
