"""The engine refuses what does not fit its context window, clearly, and keeps working after."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.engine import Engine, EngineConfig
from edge.errors import ContextOverflowError
from edge.package import open_package

WINDOW = 64


@pytest.fixture(scope="module")
def engine(smollm2_package: Path) -> Engine:
    # verify="sizes": no hashing and no "verified" stamp written to the user's cache
    return Engine(
        open_package(smollm2_package, verify="sizes"),
        EngineConfig(max_context=WINDOW, prefill_chunk=16),
    )


@pytest.fixture
def fresh(engine: Engine) -> Engine:
    engine.reset()
    return engine


def _prompt(n: int) -> list[int]:
    return [int(i) for i in np.random.default_rng(n).integers(100, 40_000, size=n)]


def test_window_is_what_was_asked(fresh: Engine) -> None:
    """max_context sets the context window (below the model's own limit)."""
    assert fresh.max_context == WINDOW
    assert fresh.position == 0


def test_prompt_longer_than_window_raises_with_both_numbers(fresh: Engine) -> None:
    """A prompt of 65 tokens in a 64-token window raises ContextOverflowError naming 65 and 64."""
    with pytest.raises(ContextOverflowError) as info:
        fresh.prefill(_prompt(WINDOW + 1))
    message = str(info.value)
    assert str(WINDOW + 1) in message and str(WINDOW) in message
    assert "max_context" in message  # says what to change
    assert isinstance(info.value, ValueError)


def test_engine_still_works_after_overflow(fresh: Engine) -> None:
    """After an overflow the position is unchanged and a valid prefill gives the same logits."""
    prompt = _prompt(10)
    expected = fresh.prefill(prompt).copy()
    fresh.reset()

    with pytest.raises(ContextOverflowError):
        fresh.prefill(_prompt(WINDOW + 1))
    assert fresh.position == 0
    np.testing.assert_array_equal(fresh.prefill(prompt), expected)
    assert fresh.position == 10

    # an overflow mid-conversation leaves the tokens already in the cache alone
    next_logits = fresh.decode(7).copy()
    fresh.rewind(10)
    with pytest.raises(ContextOverflowError, match=r"10 tokens in context \+ 55 new"):
        fresh.prefill(_prompt(WINDOW - 9))
    assert fresh.position == 10
    np.testing.assert_array_equal(fresh.decode(7), next_logits)
    assert fresh.position == 11


def test_prompt_filling_the_window_exactly_fits(fresh: Engine) -> None:
    """A prompt of exactly the window's length is accepted (the limit is inclusive)."""
    logits = fresh.prefill(_prompt(WINDOW))
    assert logits.shape == (1, fresh.spec.vocab_size)
    assert np.isfinite(logits).all()
    assert fresh.position == WINDOW


def test_decode_past_the_window_raises(fresh: Engine) -> None:
    """Decoding past a full window raises ContextOverflowError and leaves the cache as is."""
    fresh.prefill(_prompt(WINDOW - 2))
    fresh.decode(42)
    fresh.decode(43)
    assert fresh.position == WINDOW
    with pytest.raises(ContextOverflowError, match=str(WINDOW)):
        fresh.decode(44)
    assert fresh.position == WINDOW
    with pytest.raises(ContextOverflowError):
        fresh.decode(44)  # still refused, never wraps around


def test_empty_prompt_is_value_error(fresh: Engine) -> None:
    """Prefilling no tokens is a ValueError, not a silent no-op or a crash."""
    with pytest.raises(ValueError, match="no tokens"):
        fresh.prefill([])
    assert fresh.position == 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_context": 0},
        {"max_context": -5},
        {"prefill_chunk": 0},
        {"prefill_chunk": -1},
        {"threads": 0},
        {"parts_per_session": 0},
    ],
    ids=lambda k: "-".join(f"{a}={b}" for a, b in k.items()),
)
def test_invalid_engine_config_is_value_error(kwargs: dict[str, int]) -> None:
    """EngineConfig refuses non-positive values with a ValueError naming the field and value."""
    ((name, value),) = kwargs.items()
    with pytest.raises(ValueError, match=f"{name}={value}"):
        EngineConfig(**kwargs)


def test_the_default_context_shrinks_to_the_memory_available() -> None:
    """4096 tokens where their KV cache fits in a quarter of the memory available; a small
    device gets a shorter window, a multiple of 256, never below 256."""
    from edge.engine import DEFAULT_MAX_CONTEXT, default_context
    from edge.format import ModelSpec

    spec = ModelSpec(
        architecture="llama",
        vocab_size=100,
        hidden_size=64,
        intermediate_size=128,
        num_layers=30,
        num_heads=9,
        num_kv_heads=3,
        head_dim=64,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
    )
    per_token = 2 * 30 * 3 * 64 * 4  # float32 keys and values of every layer
    assert default_context(spec, 1 << 40) == DEFAULT_MAX_CONTEXT
    assert default_context(spec, 4 * per_token * 1000) == 768
    assert default_context(spec, 1 << 20) == 256
