"""A w8a8 package's logits for a token do not depend on how many tokens shared its step.

ONNX Runtime's GroupQueryAttention computes one-token steps on another path than longer ones
(1e-7 apart); w8a8 rounds every token's activations to int8, which can turn that into whole
logits. The engine therefore steps such packages two tokens at least (the second a pad), and
prompts, decode steps and speculative verification passes then agree bit for bit: on the real
SmolLM2, whose few huge activations make it the hardest case (single steps moved logits by
up to 1.4 before).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.engine import Engine, EngineConfig
from edge.errors import ContextOverflowError
from edge.package import open_package
from exporters.export import ExportConfig, quantize_package

WINDOW = 48


@pytest.fixture(scope="module")
def w8a8_engine(smollm2_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    out = quantize_package(
        smollm2_package,
        tmp_path_factory.mktemp("w8a8") / "pkg",
        ExportConfig(quant="w8a8"),
        progress=False,
    )
    return Engine(open_package(out), EngineConfig(max_context=WINDOW, prefill_chunk=16, threads=2))


def _ids(n: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(n).integers(100, 40_000, size=n)]


def test_w8a8_steps_at_least_two_tokens(w8a8_engine: Engine, smollm2_package: Path) -> None:
    assert w8a8_engine.min_step == 2
    assert Engine(open_package(smollm2_package, verify="sizes")).min_step == 1


def test_w8a8_logits_do_not_depend_on_the_step(w8a8_engine: Engine) -> None:
    """The same 24 tokens as one prompt (chunks of 16 and 8), one token at a time, and as
    verification passes of 1, 3 and 4 tokens: identical logits at every position."""
    engine, ids = w8a8_engine, _ids(24)
    engine.reset()
    prompt = engine.prefill(ids, all_logits=True)
    engine.reset()
    engine.prefill(ids[:1])
    decoded = [engine.decode(t).copy() for t in ids[1:]]
    engine.reset()
    engine.prefill(ids[:16])
    verified = [engine.verify(ids[16:17]), engine.verify(ids[17:20]), engine.verify(ids[20:24])]
    np.testing.assert_array_equal(prompt[1:], np.stack(decoded))
    np.testing.assert_array_equal(prompt[16:], np.concatenate(verified))


def test_w8a8_fills_the_whole_window(w8a8_engine: Engine) -> None:
    """A padded step needs a slot past the token: the last slot of the window still takes a
    token (the spare slot is the engine's), and the next one is refused clearly."""
    engine = w8a8_engine
    engine.reset()
    engine.prefill(_ids(WINDOW - 1))
    engine.decode(5)
    assert engine.position == WINDOW
    with pytest.raises(ContextOverflowError, match="context window of 48"):
        engine.decode(5)
    engine.rewind(WINDOW - 1)
    assert engine.decode(5).shape == (engine.spec.vocab_size,)
