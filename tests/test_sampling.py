"""Tests for edge.sampling: greedy, filters, penalty, logprobs, validation, statistics, and
randomness keyed by (seed, position)."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import InvalidSamplingError
from edge.sampling import Sampler, SamplingConfig, position_uniforms

VOCAB = 50


def _logits(seed: int = 0, vocab: int = VOCAB) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 3.0, vocab).astype(np.float32)  # (V,)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max()
    return x - m - np.log(np.exp(x - m).sum())


def _draws(cfg: SamplingConfig, logits: np.ndarray, n: int) -> list[int]:
    """n independent draws: the same logits at positions 0..n-1 (each has its own noise)."""
    sampler = Sampler(cfg, logits.size)
    return [sampler.sample(logits, [], position)[0] for position in range(n)]


def test_default_config_is_greedy() -> None:
    assert SamplingConfig().greedy
    assert not SamplingConfig(temperature=0.7).greedy


@pytest.mark.parametrize("seed", range(5))
def test_greedy_is_argmax(seed: int) -> None:
    logits = _logits(seed)
    token, _ = Sampler(SamplingConfig(), VOCAB).sample(logits, [1, 2, 3])
    assert token == int(np.argmax(logits))


def test_greedy_ignores_seed_and_filters() -> None:
    logits = _logits(1)
    cfg = SamplingConfig(temperature=0.0, top_k=3, top_p=0.5, min_p=0.2, seed=7)
    assert _draws(cfg, logits, 20) == [int(np.argmax(logits))] * 20


def test_same_seed_same_tokens() -> None:
    logits = _logits(2)
    cfg = SamplingConfig(temperature=1.3, top_k=20, top_p=0.95, min_p=0.01, seed=1234)
    first = _draws(cfg, logits, 200)
    assert first == _draws(cfg, logits, 200)
    assert len(set(first)) > 1  # it really is sampling
    assert first != _draws(SamplingConfig(temperature=1.3, top_k=20, seed=99), logits, 200)


@pytest.mark.parametrize("temperature", [0.1, 1.0, 5.0, 100.0])
def test_top_k_one_equals_greedy(temperature: float) -> None:
    logits = _logits(3)
    cfg = SamplingConfig(temperature=temperature, top_k=1, seed=0)
    assert set(_draws(cfg, logits, 100)) == {int(np.argmax(logits))}


def test_tiny_top_p_gives_argmax() -> None:
    logits = _logits(4)
    cfg = SamplingConfig(temperature=2.0, top_p=1e-6, seed=0)
    assert set(_draws(cfg, logits, 100)) == {int(np.argmax(logits))}


def test_top_p_keeps_the_nucleus() -> None:
    # probs ~ [0.5, 0.3, 0.15, 0.05]: top_p=0.8 keeps exactly the first two.
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05])).astype(np.float32)
    cfg = SamplingConfig(temperature=1.0, top_p=0.8, seed=0)
    assert set(_draws(cfg, logits, 2000)) == {0, 1}


def test_top_k_keeps_the_k_largest() -> None:
    logits = _logits(5)
    cfg = SamplingConfig(temperature=3.0, top_k=4, seed=0)
    top4 = set(np.argsort(logits)[-4:].tolist())
    seen = set(_draws(cfg, logits, 3000))
    assert seen == top4


def test_min_p_excludes_unlikely_tokens() -> None:
    # probs proportional to [1, 0.5, 0.2, 0.09, 0.01]; min_p=0.1 drops ids 3 and 4.
    logits = np.log(np.array([1.0, 0.5, 0.2, 0.09, 0.01])).astype(np.float32)
    cfg = SamplingConfig(temperature=1.0, min_p=0.1, seed=42)
    counts = np.bincount(_draws(cfg, logits, 20_000), minlength=5)
    assert counts[3] == 0 and counts[4] == 0
    assert (counts[:3] > 0).all()
    # Without min_p the same seed does produce them, so the filter is what removed them.
    unfiltered = np.bincount(_draws(SamplingConfig(temperature=1.0, seed=42), logits, 20_000))
    assert unfiltered[3] > 0


def test_repetition_penalty_positive_logit_changes_argmax() -> None:
    logits = np.array([0.0, 4.0, 3.0, -1.0], dtype=np.float32)
    cfg = SamplingConfig(repetition_penalty=2.0)
    # 4.0 / 2 = 2.0 < 3.0, so token 2 wins once token 1 was recently generated.
    assert Sampler(cfg, 4).sample(logits, [1, 1, 3])[0] == 2
    assert Sampler(cfg, 4).sample(logits, [0, 3])[0] == 1


def test_repetition_penalty_negative_logit_is_multiplied() -> None:
    logits = np.array([-1.0, -1.5, -3.0], dtype=np.float32)
    cfg = SamplingConfig(repetition_penalty=2.0)
    # -1.0 * 2 = -2.0 < -1.5: a negative logit must become more negative, not less.
    assert Sampler(cfg, 3).sample(logits, [0])[0] == 1


def test_repetition_penalty_only_looks_at_the_window() -> None:
    logits = np.array([0.0, 4.0, 3.0], dtype=np.float32)
    cfg = SamplingConfig(repetition_penalty=2.0, repetition_window=2)
    assert Sampler(cfg, 3).sample(logits, [1, 0, 0])[0] == 1  # token 1 is outside the window
    assert Sampler(cfg, 3).sample(np.asarray(logits), np.array([0, 1]))[0] == 2
    no_window = SamplingConfig(repetition_penalty=2.0, repetition_window=0)
    assert Sampler(no_window, 3).sample(logits, [1])[0] == 1


def test_repetition_penalty_leaves_exempt_tokens_alone() -> None:
    """The ids a model marks exempt (its whitespace-only tokens) keep their logits."""
    logits = np.array([0.0, 4.0, 3.0], dtype=np.float32)
    exempt = SamplingConfig(repetition_penalty=2.0, repetition_exempt=(1,))
    assert Sampler(exempt, 3).sample(logits, [1, 1])[0] == 1
    assert Sampler(exempt, 3).sample(np.array([0.0, 3.0, 4.0], np.float32), [2])[0] == 1
    with pytest.raises(InvalidSamplingError, match="repetition_exempt"):
        SamplingConfig(repetition_exempt=(-1,))


def test_repetition_penalty_does_not_modify_caller_logits() -> None:
    logits = np.array([0.0, 4.0, 3.0], dtype=np.float32)
    before = logits.copy()
    Sampler(SamplingConfig(repetition_penalty=3.0), 3).sample(logits, [1, 2])
    np.testing.assert_array_equal(logits, before)


def test_repetition_penalty_applies_when_sampling() -> None:
    logits = np.array([5.0, 0.0], dtype=np.float32)
    cfg = SamplingConfig(temperature=1.0, repetition_penalty=1e6, seed=0)
    # 5 / 1e6 ~ 0 == logit of token 1, so token 1 becomes roughly as likely as token 0.
    sampler = Sampler(cfg, 2)
    counts = np.bincount([sampler.sample(logits, [0], i)[0] for i in range(2000)], minlength=2)
    assert 800 < counts[1] < 1200


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(),
        SamplingConfig(repetition_penalty=1.7),
        SamplingConfig(temperature=0.8, top_k=10, top_p=0.9, min_p=0.05, seed=3),
        SamplingConfig(temperature=2.0, repetition_penalty=1.3, seed=3),
    ],
)
def test_logprob_is_log_softmax_of_raw_logits(cfg: SamplingConfig) -> None:
    logits = _logits(6)
    expected = _log_softmax(logits)
    sampler = Sampler(cfg, VOCAB)
    for position in range(20):
        token, logprob = sampler.sample(logits, [0, 1, 2, int(np.argmax(logits))], position)
        assert logprob == pytest.approx(expected[token], abs=1e-5)


def test_logprob_is_stable_for_large_logits() -> None:
    logits = np.array([1000.0, 999.0, -1000.0], dtype=np.float32)
    token, logprob = Sampler(SamplingConfig(), 3).sample(logits, [])
    assert token == 0
    assert logprob == pytest.approx(-np.log1p(np.exp(-1.0)), abs=1e-6)


def test_masked_tokens_are_never_sampled() -> None:
    logits = np.array([0.0, -np.inf, 0.0, -np.inf], dtype=np.float32)
    cfg = SamplingConfig(temperature=1.0, seed=0)
    assert set(_draws(cfg, logits, 2000)) == {0, 2}


def test_tiny_temperature_does_not_overflow() -> None:
    logits = _logits(7)
    cfg = SamplingConfig(temperature=1e-300, seed=0)
    assert set(_draws(cfg, logits, 50)) == {int(np.argmax(logits))}


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("temperature", float("inf")),
        ("temperature", float("nan")),
        ("top_k", -1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_p", float("nan")),
        ("min_p", -0.1),
        ("min_p", 1.0),
        ("repetition_penalty", 0.0),
        ("repetition_penalty", -1.0),
        ("repetition_penalty", float("inf")),
        ("repetition_window", -1),
    ],
)
def test_invalid_values_raise_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(InvalidSamplingError, match=field) as info:
        SamplingConfig(**{field: value})
    assert repr(value) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bad_logits_are_rejected() -> None:
    sampler = Sampler(SamplingConfig(), 4)
    with pytest.raises(ValueError, match="shape"):
        sampler.sample(np.zeros(5, dtype=np.float32), [])
    with pytest.raises(ValueError, match="not usable"):
        sampler.sample(np.full(4, -np.inf, dtype=np.float32), [])
    with pytest.raises(ValueError, match="recent token ids"):
        Sampler(SamplingConfig(repetition_penalty=1.1), 4).sample(np.zeros(4, np.float32), [9])


def test_temperature_one_matches_softmax_frequencies() -> None:
    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0], dtype=np.float32)
    probs = np.exp(_log_softmax(logits))
    n = 20_000
    cfg = SamplingConfig(temperature=1.0, seed=2024)
    freqs = np.bincount(_draws(cfg, logits, n), minlength=5) / n
    # 4 standard errors per token: a false failure is a ~1e-4 event, and the seed is fixed.
    tolerance = 4 * np.sqrt(probs * (1 - probs) / n)
    np.testing.assert_array_less(np.abs(freqs - probs), tolerance)


def test_temperature_sharpens_and_flattens() -> None:
    logits = np.array([2.0, 1.0, 0.0], dtype=np.float32)
    n = 5000
    cold = np.bincount(_draws(SamplingConfig(temperature=0.3, seed=1), logits, n), minlength=3)
    hot = np.bincount(_draws(SamplingConfig(temperature=3.0, seed=1), logits, n), minlength=3)
    assert cold[0] > hot[0]
    assert cold[2] < hot[2]


# ---- randomness keyed by (seed, position) ------------------------------------------------------

SAMPLED = SamplingConfig(temperature=0.8, top_p=0.9, seed=1)


def test_token_depends_only_on_seed_and_position() -> None:
    """A token is a function of (logits, recent tokens, seed, position): drawing positions
    in another order, skipping some, or on a fresh sampler changes nothing; `choose` picks
    what `sample` picks."""
    rows = np.stack([_logits(seed) for seed in range(40)])  # (40, V)
    forward = Sampler(SAMPLED, VOCAB)
    tokens = [forward.sample(rows[p], [], p)[0] for p in range(40)]
    backward = Sampler(SAMPLED, VOCAB)
    assert [backward.sample(rows[p], [], p)[0] for p in reversed(range(40))] == tokens[::-1]
    assert [Sampler(SAMPLED, VOCAB).choose(rows[p], [], p) for p in range(0, 40, 3)] == (
        tokens[::3]
    )
    assert len(set(tokens)) > 5  # it really is sampling


def test_position_defaults_to_the_history_length() -> None:
    """The token after n tokens of history sits at position n."""
    logits, history = _logits(8), [3, 1, 4, 1, 5]
    sampler = Sampler(SAMPLED, VOCAB)
    assert sampler.sample(logits, history)[0] == sampler.sample(logits, history, 5)[0]
    assert sampler.choose(logits, history) == sampler.choose(logits, [9], 5)


def test_seeds_and_positions_get_independent_noise() -> None:
    """Neighbouring positions and seeds do not share or shift their streams."""
    streams = [position_uniforms(seed, position, 64) for seed in (0, 1) for position in (0, 1)]
    for i, a in enumerate(streams):
        for b in streams[i + 1 :]:
            assert not np.isin(a, b).any()
    assert np.array_equal(position_uniforms(5, 7, 64), position_uniforms(5, 7, 64))


def test_noise_of_a_token_id_does_not_depend_on_the_vocabulary_size() -> None:
    """A draft model with a larger or smaller embedding gets the target's noise for every
    id both have, so coupling works across vocabulary sizes."""
    assert np.array_equal(position_uniforms(3, 11, 1000)[:600], position_uniforms(3, 11, 600))


def test_seed_none_draws_one_seed_per_sampler() -> None:
    """No seed: each sampler (request) draws its own, then keeps it for every position."""
    config = SamplingConfig(temperature=1.0)
    first, second = Sampler(config, VOCAB), Sampler(config, VOCAB)
    assert first.seed != second.seed
    logits = _logits(9)
    tokens = [first.choose(logits, [], p) for p in range(30)]
    assert tokens == [first.choose(logits, [], p) for p in range(30)]
    assert tokens != [second.choose(logits, [], p) for p in range(30)]
    assert Sampler(SamplingConfig(temperature=1.0, seed=4), VOCAB).seed == 4


def test_negative_position_is_rejected() -> None:
    with pytest.raises(ValueError, match="position"):
        Sampler(SAMPLED, VOCAB).choose(_logits(0), [], -1)


@pytest.mark.parametrize(
    "cfg",
    [
        SamplingConfig(temperature=0.8, top_p=0.9, seed=5),
        SamplingConfig(temperature=1.3, top_k=8, min_p=0.02, repetition_penalty=1.5, seed=6),
    ],
)
def test_gumbel_max_matches_the_processed_distribution(cfg: SamplingConfig) -> None:
    """Draws over positions follow `distribution` (after penalty, temperature, top-k, top-p,
    min-p), token by token within 4 standard errors, and never leave its support."""
    logits = _logits(10, vocab=12) / 3.0
    recent = [0, int(np.argmax(logits))]
    sampler = Sampler(cfg, logits.size)
    ids, probs = sampler.distribution(logits, recent)
    expected = np.zeros(logits.size)
    expected[ids] = probs
    n = 20_000
    draws = [sampler.sample(logits, recent, position)[0] for position in range(n)]
    freqs = np.bincount(draws, minlength=logits.size) / n
    assert (freqs[expected == 0] == 0).all()
    tolerance = 4 * np.sqrt(expected * (1 - expected) / n) + 1e-12
    np.testing.assert_array_less(np.abs(freqs - expected), tolerance)
