"""Fixtures for the streamed-engine tests: SmolLM2 int4 (made once per session from the fp32
package of tests/conftest.py), and small callables shared by the test files (a fixture, not an
import: test folders are not packages).

Budgets are derived from the engine's own sizing (`StreamConfig.plan`), never hard-coded, so the
tests follow the accounting when it changes: the minimum streams every block through a window of
one; the minimum plus two units gives a window of two.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from edge.errors import BudgetTooSmallError
from edge.kv_cache import STREAMED_KV_DTYPE
from edge.model import Model
from edge.package import Package, open_package
from edge.streaming import StreamConfig
from memory_sched.sizing import StreamPlan

PROMPT = "The capital of France is"
GREEDY_TOKENS = 12
MAX_CONTEXT = 256
# Far above any SmolLM2 package: everything pinned, nothing streamed.
EVERYTHING_PINNED = 8 << 30


def minimum_budget(
    package: Package,
    max_context: int = MAX_CONTEXT,
    prefill_chunk: int = 64,
    kv_dtype: str = STREAMED_KV_DTYPE,
) -> int:
    """The smallest budget the engine accepts for `package`, as its error states it."""
    config = StreamConfig(
        1, max_context=max_context, prefill_chunk=prefill_chunk, kv_dtype=kv_dtype
    )
    try:
        config.plan(package)
    except BudgetTooSmallError as exc:
        assert exc.minimum > 1
        return exc.minimum
    raise AssertionError("a budget of one byte was accepted")


def stream_plan(
    package: Package,
    budget: int,
    max_context: int = MAX_CONTEXT,
    kv_dtype: str = STREAMED_KV_DTYPE,
) -> StreamPlan:
    """What the engine will pin and stream at `budget` (the default prefill chunk)."""
    config = StreamConfig(budget, max_context=max_context, kv_dtype=kv_dtype)
    return config.plan(package)


def greedy_tokens(model: Model, prompt: str = PROMPT, n: int = GREEDY_TOKENS) -> list[int]:
    """`n` greedy tokens after `prompt`, EOS ignored so every run has the same length."""
    return [r.token for r in model.stream(prompt, max_tokens=n, ignore_eos=True)]


@contextmanager
def streamed_model(root: Path, budget: int | str, **kwargs: object) -> Iterator[Model]:
    """A `Model` on the streamed engine; its prefetcher thread is stopped afterwards."""
    model = Model(
        open_package(root, verify="sizes"), StreamConfig(budget, max_context=MAX_CONTEXT), **kwargs
    )  # type: ignore[arg-type]
    try:
        yield model
    finally:
        model.engine.close()


@pytest.fixture(scope="session")
def streaming_int4_package(smollm2_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 int4 as `edge quantize` makes it (MatMulNBits, accuracy_level 4, tied head)."""
    from exporters.export import ExportConfig, quantize_package

    return quantize_package(
        smollm2_package,
        tmp_path_factory.mktemp("stream-int4") / "pkg",
        ExportConfig(quant="int4"),
        progress=False,
    )


class StreamingHelpers:
    """The constants and helpers above as one object, for test files (which cannot import a
    conftest): `def test_x(streaming): streaming.minimum_budget(package)`."""

    PROMPT = PROMPT
    GREEDY_TOKENS = GREEDY_TOKENS
    MAX_CONTEXT = MAX_CONTEXT
    EVERYTHING_PINNED = EVERYTHING_PINNED
    minimum_budget = staticmethod(minimum_budget)
    stream_plan = staticmethod(stream_plan)
    greedy_tokens = staticmethod(greedy_tokens)
    streamed_model = staticmethod(streamed_model)


@pytest.fixture(scope="session")
def streaming() -> type[StreamingHelpers]:
    """The helpers of this folder (see `StreamingHelpers`)."""
    return StreamingHelpers
