"""Sampled speculative decoding draws from the target's distribution, not the draft's.

Verification keeps the drafted tokens equal to the target's own Gumbel-max choices (noise keyed
by (seed, position)) and adds the target's choice at the first mismatch, so every committed
token is the target's own sample. Checked with Pearson's chi-square goodness-of-fit test at
significance 0.001: on `accept_draft` alone with synthetic logits, and end to end on a tiny
model whose 48-token vocabulary keeps the exact distributions cheap to compute and to fill with
samples. That a seed fixes the text, equal to plain sampling's, is in test_speculative_seeded.

Every run is seeded, so the tests are deterministic; the significance level only says how
unlucky a correct implementation would have to be to fail with some other choice of seeds.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.engine import Engine, EngineConfig
from edge.model import Model
from edge.package import open_package
from edge.sampling import Sampler, SamplingConfig
from edge.speculative import SpeculativeConfig
from edge.speculative.acceptance import accept_draft

Z_999 = 3.090232  # the standard normal's 0.999 quantile
MIN_EXPECTED = 5.0  # Pearson's rule of thumb: pool bins expected to hold fewer samples
VOCAB = 48
PROMPT = [5, 17, 30, 9, 41, 12]  # ids below VOCAB


# ---- the test statistic ------------------------------------------------------------------------


def chi2_critical(df: int, z: float = Z_999) -> float:
    """The chi-square quantile by Wilson–Hilferty: df (1 - 2/(9 df) + z sqrt(2/(9 df)))^3.
    For significance 0.001 it is within 3% of the exact value from df = 1 up (10.83 exact vs
    11.2 at df = 1, 18.47 vs 18.72 at df = 4, 73.40 vs 73.49 at df = 40)."""
    c = 2.0 / (9.0 * df)
    return df * (1.0 - c + z * math.sqrt(c)) ** 3


def chi_square(observed: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    """(Pearson's statistic, degrees of freedom) of counts against probabilities, pooling
    the bins expected to hold fewer than MIN_EXPECTED samples into one."""
    n = observed.sum()
    assert not observed[probs <= 0].any(), (
        f"samples of impossible tokens: {np.flatnonzero((probs <= 0) & (observed > 0))}"
    )
    expected = probs * n
    small = (expected < MIN_EXPECTED) & (probs > 0)
    obs = list(observed[~small & (probs > 0)])
    exp = list(expected[~small & (probs > 0)])
    if small.any():
        pooled_obs, pooled_exp = observed[small].sum(), expected[small].sum()
        if pooled_exp < MIN_EXPECTED and exp:  # still too small: join the smallest bin
            i = int(np.argmin(exp))
            pooled_obs, pooled_exp = pooled_obs + obs.pop(i), pooled_exp + exp.pop(i)
        obs.append(pooled_obs)
        exp.append(pooled_exp)
    o, e = np.asarray(obs, float), np.asarray(exp, float)
    assert len(e) >= 2, "one bin: nothing to test"
    return float(((o - e) ** 2 / e).sum()), len(e) - 1


def assert_fits(observed: np.ndarray, probs: np.ndarray, what: str) -> None:
    stat, df = chi_square(observed, probs)
    limit = chi2_critical(df)
    assert stat < limit, f"{what}: chi-square {stat:.1f} >= {limit:.1f} (df {df})"


def dense(ids: np.ndarray, probs: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros(size)
    out[ids] = probs
    return out


def test_chi_square_rejects_a_wrong_distribution() -> None:
    """Control: the statistic flags samples from a distribution 10% off, at this N."""
    rng = np.random.default_rng(0)
    p = np.array([0.4, 0.3, 0.2, 0.1])
    wrong = np.array([0.36, 0.33, 0.2, 0.11])
    right_counts = np.bincount(rng.choice(4, 20000, p=p), minlength=4)
    wrong_counts = np.bincount(rng.choice(4, 20000, p=wrong), minlength=4)
    assert chi_square(right_counts, p)[0] < chi2_critical(3)
    assert chi_square(wrong_counts, p)[0] > chi2_critical(3)


# ---- accept_draft alone -------------------------------------------------------------------------

UNIT_V = 8
UNIT_N = 12000


def _unit_logits(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 1.5, (3, UNIT_V)).astype(np.float32)


def _draft_dist(kind: str, p: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A draft distribution unlike the target's p: over every token, or over only three
    (p's likeliest, its least likely, and one between), so that the draft proposes tokens
    the target cannot produce (under top-k) and cannot propose most of the target's."""
    rng = np.random.default_rng(seed)
    if kind == "full":
        return np.arange(UNIT_V), rng.dirichlet(np.ones(UNIT_V))
    order = np.argsort(p)
    ids = np.array([order[-1], order[0], order[UNIT_V // 2]])
    return ids, rng.dirichlet(np.ones(3))


@pytest.mark.parametrize("draft_kind", ["full", "partial", "one-hot"])
@pytest.mark.parametrize(
    "sampling", [dict(temperature=1.0), dict(temperature=0.7, top_k=4, top_p=0.9)]
)
def test_accept_draft_follows_target(draft_kind: str, sampling: dict[str, Any]) -> None:
    """Two draft tokens from q (or fixed tokens), drawn independently of the target's noise,
    verified by `accept_draft` with seed j in round j: the committed tokens are the target's
    own choices, the first follows the target's p1, and whenever the first draft token was
    accepted, the second committed token (second draft, or the correction after its
    rejection) follows p2. Covers p and q with different supports both ways."""
    logits = _unit_logits(1)
    sampler = Sampler(SamplingConfig(seed=2, **sampling), UNIT_V)
    p1 = dense(*sampler.distribution(logits[0], []), UNIT_V)
    p2 = dense(*sampler.distribution(logits[1], []), UNIT_V)
    kind = "partial" if draft_kind == "partial" else "full"
    drafts = [_draft_dist(kind, p, seed) for p, seed in ((p1, 3), (p2, 4))]
    fixed = [int(np.argsort(p1)[-2]), int(np.argsort(p2)[-2])]
    rng = np.random.default_rng(5)
    first, second = np.zeros(UNIT_V, int), np.zeros(UNIT_V, int)
    accepted = 0
    for j in range(UNIT_N):
        if draft_kind == "one-hot":  # fixed proposals: each target's second likeliest token
            tokens = fixed
        else:
            tokens = [int(rng.choice(ids, p=q)) for ids, q in drafts]
        sampler = Sampler(SamplingConfig(seed=j, **sampling), UNIT_V)
        n, token = accept_draft(sampler, logits, tokens, [])
        committed = [*tokens[:n], token]
        assert committed[0] == sampler.choose(logits[0], [], 0)
        first[committed[0]] += 1
        if n >= 1:
            assert committed[1] == sampler.choose(logits[1], [], 1)
            second[committed[1]] += 1
        accepted += n
    assert 0 < accepted < 2 * UNIT_N  # both outcomes occur
    assert_fits(first, p1, "first committed token")
    assert second.sum() > 500  # independent drafts: accepted with probability sum(p q)
    assert_fits(second, p2, "second committed token after an accepted first draft")


def test_coupled_draft_is_accepted_more_often() -> None:
    """A draft choosing with the target's noise (its seed) on the target's own logits is
    always accepted; on other logits it is accepted more often than with noise of its own."""
    target_logits = _unit_logits(7)
    draft_logits = target_logits + np.random.default_rng(8).normal(0.0, 1.0, (3, UNIT_V))

    def draft(sampler: Sampler, logits: np.ndarray) -> list[int]:
        first = sampler.choose(logits[0], [])
        return [first, sampler.choose(logits[1], [first])]

    same = agreed = alone = 0
    rounds = 2000
    for j in range(rounds):
        config = SamplingConfig(temperature=1.0, seed=2 * j)
        target = Sampler(config, UNIT_V)
        coupled = Sampler(config, UNIT_V)
        independent = Sampler(replace(config, seed=2 * j + 1), UNIT_V)
        same += accept_draft(target, target_logits, draft(coupled, target_logits), [])[0]
        agreed += accept_draft(target, target_logits, draft(coupled, draft_logits), [])[0]
        alone += accept_draft(target, target_logits, draft(independent, draft_logits), [])[0]
    assert same == 2 * rounds
    assert agreed > 1.3 * alone > 0


# ---- end to end on a tiny model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def small_vocab(tiny_factory: Callable[..., Path]) -> tuple[Path, Path]:
    """(target, draft): two random 48-token Llamas with the same tokenizer."""
    return tiny_factory("llama", 7, vocab_size=VOCAB), tiny_factory("llama", 107, vocab_size=VOCAB)


def exact_distributions(package: Path, config: SamplingConfig) -> list[np.ndarray]:
    """The target's exact marginals of generated tokens 1, 2 and 3 after PROMPT: p1, then
    mixtures of the next-token distributions over every prefix, weighted by its probability
    (from the target engine's logits and `Sampler.distribution`, as sampling uses them)."""
    engine = Engine(open_package(package), EngineConfig(threads=1))
    sampler = Sampler(config, VOCAB)
    marginals = [np.zeros(VOCAB) for _ in range(3)]
    start = len(PROMPT)

    def expand(prefix: list[int], logits: np.ndarray, weight: float, depth: int) -> None:
        ids, probs = sampler.distribution(logits, PROMPT + prefix)
        marginals[depth][ids] += weight * probs
        if depth == 2:
            return
        for token, p in zip(ids.tolist(), probs.tolist()):
            if p > 0:
                engine.rewind(start + depth)
                expand([*prefix, token], engine.decode(token).copy(), weight * p, depth + 1)

    expand([], engine.prefill(PROMPT)[0].copy(), 1.0, 0)
    for m in marginals:
        assert abs(m.sum() - 1.0) < 1e-6
    return marginals


@pytest.mark.parametrize(
    ("sampling", "runs"),
    [
        (dict(temperature=1.0), 2500),
        (dict(temperature=1.0, top_k=5, top_p=0.9), 1500),
    ],
)
def test_speculative_sampling_matches_target(
    sampling: dict[str, Any],
    runs: int,
    small_vocab: tuple[Path, Path],
    load_tiny: Callable[..., Model],
) -> None:
    """Another random model drafts 2 tokens (most are rejected); over `runs` seeds the
    empirical marginals of generated tokens 1-3 fit the target's exact ones. Token 2 is the
    first draft token or the residual draw after its rejection; token 3 the second draft
    token, its correction, or the bonus token."""
    target, draft = small_vocab
    model = load_tiny(
        target,
        draft=load_tiny(draft),
        speculative=SpeculativeConfig(adaptive=False, draft_tokens=2),
    )
    counts = np.zeros((3, VOCAB), int)
    drafted = accepted = 0
    for seed in range(runs):
        responses = list(model.stream(PROMPT, max_tokens=3, ignore_eos=True, seed=seed, **sampling))
        for position, r in enumerate(responses):
            counts[position, r.token] += 1
        drafted += responses[-1].speculation.drafted
        accepted += responses[-1].speculation.accepted
    assert drafted > runs  # speculation ran in (nearly) every run
    assert 0.02 < accepted / drafted < 0.98, "need both accepted and rejected drafts"
    exact = exact_distributions(target, SamplingConfig(**sampling))
    for position in range(3):
        assert_fits(counts[position], exact[position], f"generated token {position + 1}")


def test_sampled_speculation_is_reproducible(
    small_vocab: tuple[Path, Path], load_tiny: Callable[..., Model]
) -> None:
    """A seed fixes the sampled speculative output, with adaptive k and from the very first
    request (whose first step decodes plainly to measure plain decoding), and it is plain
    sampling's output with that seed."""
    target, draft = small_vocab
    model = load_tiny(target, draft=load_tiny(draft))
    runs = [
        [
            r.token
            for r in model.stream(PROMPT, max_tokens=24, temperature=1.0, seed=s, ignore_eos=True)
        ]
        for s in (11, 11, 12, 11)
    ]
    assert runs[0] == runs[1] == runs[3]
    assert runs[0] != runs[2]
    plain = load_tiny(target)
    assert runs[0] == [
        r.token
        for r in plain.stream(PROMPT, max_tokens=24, temperature=1.0, seed=11, ignore_eos=True)
    ]
