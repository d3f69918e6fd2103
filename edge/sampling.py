"""Choosing the next token from a model's logits, in pure numpy.

The pipeline follows llama.cpp and Hugging Face so that a given `SamplingConfig` behaves the
way users of those tools expect:

    repetition penalty -> (greedy: argmax) | temperature -> top-k -> top-p -> min-p -> draw

The draw is Gumbel-max: the kept token with the largest log-weight plus Gumbel noise, which
samples exactly from the filtered distribution. The noise of the token at sequence position p
comes from its own random stream, keyed by (seed, p) alone, so a token is a pure function of
(logits, recent tokens, seed, position): not of how many draws came before, or in what order.
That is what makes speculative decoding reproducible and equal to plain sampling: verification
asks the same function at the same positions, and a draft model choosing with the same noise
agrees with the target wherever both favour the same token under it (see
`edge.speculative.acceptance`).

The greedy path is the hot path on small devices, so it reuses one scratch buffer and costs an
argmax plus one log-sum-exp; the stochastic path may allocate.

Logprobs, the chosen token's and the most likely alternatives' (`Sampler.logprobs`), are all
`log_softmax` of the raw logits, before the penalty, temperature and filters: what the model
believes, whatever way we sample.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.errors import InvalidSamplingError

__all__ = [
    "Sampler",
    "SamplingConfig",
    "TopLogprobs",
    "fresh_seed",
    "position_uniforms",
    "top_logprobs",
]

# The k most likely (token id, logprob) of one step, most likely first.
TopLogprobs = tuple[tuple[int, float], ...]


def _require(ok: bool, name: str, value: object, allowed: str) -> None:
    """Raise an error naming the field, its bad value and the allowed range."""
    if not ok:
        raise InvalidSamplingError(f"{name}={value!r} is out of range: must be {allowed}")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class SamplingConfig:
    """How to pick tokens; the defaults give deterministic greedy decoding.

    `temperature == 0` means greedy: top-k, top-p, min-p and the seed are then ignored, but
    the repetition penalty still applies. `top_k == 0` and `top_p == 1` turn those filters off.
    A seed fixes the sampled text, with or without a speculative draft; `None` draws a fresh
    seed for each `Sampler` (each request).
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    repetition_window: int = 64  # how many recent tokens the penalty looks at
    seed: int | None = None
    # Ids the penalty never touches: `Model` passes the tokens that decode to whitespace alone
    # (a penalised newline turns verse into prose; llama.cpp's penalize_nl=false, likewise).
    repetition_exempt: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Type checks first: a string or float where an int belongs would otherwise surface as
        # a numpy TypeError deep in sampling (or, for the seed, numpy's own ValueError).
        for name in ("temperature", "top_p", "min_p", "repetition_penalty"):
            value = getattr(self, name)
            _require(_is_real(value), name, value, "a number")
        for name in ("top_k", "repetition_window"):
            value = getattr(self, name)
            _require(_is_int(value), name, value, "an integer")
        t, p, rp = self.temperature, self.top_p, self.repetition_penalty
        _require(math.isfinite(t) and t >= 0, "temperature", t, "a finite number >= 0")
        _require(self.top_k >= 0, "top_k", self.top_k, "an integer >= 0 (0 = off)")
        _require(0 < p <= 1, "top_p", p, "in (0, 1] (1 = off)")
        _require(0 <= self.min_p < 1, "min_p", self.min_p, "in [0, 1) (0 = off)")
        _require(math.isfinite(rp) and rp > 0, "repetition_penalty", rp, "a finite number > 0")
        _require(self.repetition_window >= 0, "repetition_window", self.repetition_window, ">= 0")
        _require(
            all(_is_int(i) and i >= 0 for i in self.repetition_exempt),
            "repetition_exempt",
            self.repetition_exempt,
            "token ids (integers >= 0)",
        )
        _require(
            self.seed is None or (_is_int(self.seed) and self.seed >= 0),
            "seed",
            self.seed,
            "None or an integer >= 0",
        )

    @property
    def greedy(self) -> bool:
        """True when the token is the argmax, so no randomness is involved."""
        return self.temperature == 0.0


def fresh_seed() -> int:
    """A seed from the OS's entropy (128 bits), for requests that gave none."""
    return int(np.random.SeedSequence().entropy)


def position_uniforms(seed: int, position: int, size: int) -> np.ndarray:
    """Uniforms in [0, 1), shape (size,) float64, for the token at sequence `position`.

    Each (seed, position) keys a stream of its own (a SeedSequence spawn key, hashed, so
    neighbouring positions and seeds are independent), and value i belongs to token id i:
    a vocabulary of another size gets the same values for the ids both have.
    """
    if position < 0:
        raise ValueError(f"position={position} must be >= 0")
    stream = np.random.SeedSequence(seed, spawn_key=(position,))
    return np.random.Generator(np.random.PCG64(stream)).random(size)


class Sampler:
    """Applies a `SamplingConfig` to one step's logits.

    Its randomness is a function of (seed, position), so it holds no random state; the seed is
    `config.seed`, or one drawn once here when that is None. It reuses a scratch buffer, so it
    is not thread-safe: use one `Sampler` per generation stream (a draft model gets its own,
    with the same `seed`, to choose with the same noise).
    """

    def __init__(self, config: SamplingConfig, vocab_size: int) -> None:
        if vocab_size <= 0:
            raise ValueError(f"vocab_size={vocab_size} must be > 0")
        self.config = config
        self.vocab_size = vocab_size
        self.seed: int = config.seed if config.seed is not None else fresh_seed()
        self._scratch = np.empty(vocab_size, dtype=np.float32)  # (V,) reused every step
        self._exempt = np.unique(np.asarray(config.repetition_exempt, dtype=np.int64))

    def sample(
        self,
        logits: np.ndarray,
        recent_tokens: Sequence[int] | np.ndarray,
        position: int | None = None,
    ) -> tuple[int, float]:
        """Pick the next token from `logits` (shape (V,), float32).

        `recent_tokens` are the ids generated (or prompted) so far, oldest first; only the
        last `repetition_window` of them are penalized. `position` is the chosen token's
        index in the whole sequence (prompt included), which picks its random noise; it
        defaults to `len(recent_tokens)`, right when those are the whole sequence so far.

        Returns `(token_id, logprob)`. `logprob` is the log-probability of the chosen token
        under the model's own distribution, `log_softmax(logits)[token_id]` of the raw
        logits, before the penalty, temperature and filters: it scores what the model
        believes, independent of how we chose to sample.
        """
        logits = self._check_logits(logits)
        lse = self._logsumexp(logits)  # uses the scratch buffer, so it runs first
        penalized = self._penalize(logits, recent_tokens)
        token = self._pick(penalized, _position(position, recent_tokens))
        return token, float(logits[token]) - lse

    def logprobs(self, logits: np.ndarray, token: int, k: int = 0) -> tuple[float, TopLogprobs]:
        """`token`'s logprob, as `sample` returns it, and the `k` most likely tokens with
        theirs (`top_logprobs`), all from one log-sum-exp of the raw `logits` (V,): so the
        chosen token's figure equals its entry among the alternatives, bit for bit."""
        logits = self._check_logits(logits)
        lse = self._logsumexp(logits)
        return float(logits[token]) - lse, top_logprobs(logits, k, lse)

    def _check_logits(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits)
        if logits.shape != (self.vocab_size,):
            raise ValueError(f"logits shape {logits.shape} != ({self.vocab_size},)")
        if not np.issubdtype(logits.dtype, np.floating):
            raise TypeError(f"logits dtype {logits.dtype} is not a float type")
        return logits

    def _logsumexp(self, logits: np.ndarray) -> float:
        """log(sum(exp(logits))) in float64 without allocating a (V,) temporary."""
        m = float(np.max(logits))
        if not math.isfinite(m):  # NaN, +inf, or every logit -inf
            raise ValueError(f"logits are not usable: max is {m}")
        np.subtract(logits, m, out=self._scratch)
        np.exp(self._scratch, out=self._scratch)
        return m + math.log(float(self._scratch.sum(dtype=np.float64)))

    def _penalize(
        self, logits: np.ndarray, recent_tokens: Sequence[int] | np.ndarray
    ) -> np.ndarray:
        """HF repetition penalty: shrink each recent token's logit toward "less likely".

        Returns `logits` itself when there is nothing to do, else the scratch buffer (V,).
        """
        ids = self._recent_ids(recent_tokens)
        if ids.size == 0:
            return logits
        penalty = self.config.repetition_penalty
        out = self._scratch
        np.copyto(out, logits)
        picked = out[ids]  # (n_distinct,)
        out[ids] = np.where(picked > 0, picked / penalty, picked * penalty)
        return out

    def _recent_ids(self, recent_tokens: Sequence[int] | np.ndarray) -> np.ndarray:
        """Distinct ids in the penalty window, shape (n_distinct,) int64."""
        window = self.config.repetition_window
        if self.config.repetition_penalty == 1.0 or window == 0:
            return np.empty(0, dtype=np.int64)
        if not isinstance(recent_tokens, (list, tuple, np.ndarray)):
            recent_tokens = list(recent_tokens)
        ids = np.unique(np.asarray(recent_tokens[-window:], dtype=np.int64))
        if ids.size and (ids[0] < 0 or ids[-1] >= self.vocab_size):
            raise ValueError(f"recent token ids must be in [0, {self.vocab_size})")
        if self._exempt.size:
            ids = ids[~np.isin(ids, self._exempt, assume_unique=True)]
        return ids

    def choose(
        self,
        logits: np.ndarray,
        recent_tokens: Sequence[int] | np.ndarray,
        position: int | None = None,
    ) -> int:
        """The token `sample` picks at `position`, without its logprob: speculative
        verification and drafting ask this, so they pick what plain sampling picks."""
        scores = self._penalize(self._check_logits(logits), recent_tokens)
        return self._pick(scores, _position(position, recent_tokens))

    def distribution(
        self, logits: np.ndarray, recent_tokens: Sequence[int] | np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The distribution `sample` draws from: (token ids (K,), probabilities (K,) summing
        to 1) after penalty, temperature, top-k, top-p and min-p; its exact statistics, for
        tests and for anyone scoring what sampling would do."""
        if self.config.greedy:
            return np.array([self.choose(logits, recent_tokens)]), np.ones(1)
        scores = self._penalize(self._check_logits(logits), recent_tokens)
        ids, vals = self._kept(scores)
        probs = np.exp(vals - vals.max())  # (K,)
        return ids, probs / probs.sum()

    def _kept(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Temperature -> top-k -> top-p -> min-p; (ids (K,), unnormalized log-weights (K,))."""
        cfg = self.config
        # Shift by the max before dividing so a tiny temperature cannot overflow to inf.
        scaled = (scores.astype(np.float64) - float(np.max(scores))) / cfg.temperature  # (V,)
        ids, vals = _top_k(scaled, cfg.top_k)  # (K,), (K,)
        if cfg.top_p < 1.0:
            ids, vals = _top_p(ids, vals, cfg.top_p)
        return _min_p(ids, vals, cfg.min_p)

    def _pick(self, scores: np.ndarray, position: int) -> int:
        """Greedy: the argmax. Else Gumbel-max over the kept tokens: argmax of log-weight plus
        -log(-log(u)), u uniform, is an exact draw from their softmax; with u from
        (seed, position) the draw depends on nothing else."""
        if self.config.greedy:
            return int(np.argmax(scores))
        ids, vals = self._kept(scores)
        uniforms = position_uniforms(self.seed, position, self.vocab_size)[ids]  # (K,)
        with np.errstate(divide="ignore"):  # u == 0 (p = 2^-53): noise -inf, never chosen
            noisy = vals - np.log(-np.log(uniforms))
        return int(ids[int(np.argmax(noisy))])


def top_logprobs(logits: np.ndarray, k: int, lse: float) -> TopLogprobs:
    """The `k` largest of `logits` (V,) as (id, logits[id] - lse), most likely first (ties:
    lower id first); () for k <= 0. An argpartition, O(V), then a sort of k: cheap enough to
    run every step, and run only when asked."""
    k = min(k, logits.size)
    if k <= 0:
        return ()
    ids = np.argpartition(logits, -k)[-k:] if k < logits.size else np.arange(logits.size)
    vals = logits[ids]  # (k,)
    order = np.lexsort((ids, -vals))
    return tuple((int(ids[j]), float(vals[j]) - lse) for j in order)


def _position(position: int | None, recent_tokens: Sequence[int] | np.ndarray) -> int:
    return len(recent_tokens) if position is None else position


def _top_k(scaled: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Keep the k largest scores (unordered); all of them when k is 0 or >= V."""
    if k == 0 or k >= scaled.size:
        return np.arange(scaled.size), scaled
    ids = np.argpartition(scaled, -k)[-k:]
    return ids, scaled[ids]


def _top_p(ids: np.ndarray, vals: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the smallest most-likely set whose probability mass reaches top_p (>= 1 token)."""
    order = np.argsort(-vals, kind="stable")
    ids, vals = ids[order], vals[order]
    probs = np.exp(vals - vals[0])
    cum = np.cumsum(probs) / probs.sum()
    keep = min(int(np.searchsorted(cum, top_p, side="left")) + 1, ids.size)
    return ids[:keep], vals[:keep]


def _min_p(ids: np.ndarray, vals: np.ndarray, min_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Drop tokens with prob < min_p * max prob, and any with zero probability.

    The ratio prob/max_prob is exp(val - max_val), so no normalization is needed.
    """
    floor = vals.max() + math.log(min_p) if min_p > 0 else -math.inf
    mask = (vals >= floor) & (vals > -math.inf)
    return ids[mask], vals[mask]
