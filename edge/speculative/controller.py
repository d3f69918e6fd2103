"""How many tokens to draft next, from measured acceptance and measured costs.

A round that drafts k tokens commits E(k) = (1 - a^(k+1)) / (1 - a) tokens on average
(acceptance a per token, plus the target's own token) and costs the draft's time plus one
target pass over k+1 tokens. Plain decoding commits 1 token per target step. The controller
picks the k with the best tokens per second and, when no k beats plain decoding, switches
speculation off (probing again now and then, since acceptance changes with the text).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import ConfigError


@dataclass(frozen=True)
class SpeculativeConfig:
    """`draft_tokens`: k when not adaptive, the first k tried when adaptive (<= max_draft).

    `parallel` overlaps drafting with verification (PEARL): while the target verifies a
    draft, the draft model drafts the next tokens assuming all are accepted.
    """

    draft_tokens: int = 4
    max_draft: int = 8
    adaptive: bool = True
    parallel: bool = False
    self_disable: bool = True
    probe_every: int = 16  # plain tokens between probes while speculation is off
    smoothing: float = 0.3  # weight of the newest measurement in running averages

    def __post_init__(self) -> None:
        if not 1 <= self.max_draft <= 64:
            raise ConfigError(f"max_draft={self.max_draft}; must be in 1..64")
        if not 1 <= self.draft_tokens <= self.max_draft:
            raise ConfigError(f"draft_tokens={self.draft_tokens}; must be in 1..max_draft "
                              f"({self.max_draft})")
        if self.probe_every < 1:
            raise ConfigError(f"probe_every={self.probe_every}; must be >= 1")
        if not 0 < self.smoothing <= 1:
            raise ConfigError(f"smoothing={self.smoothing}; must be in (0, 1]")


class _Average:
    """Exponential moving average; `None` until the first sample."""

    def __init__(self, weight: float) -> None:
        self.weight, self.value = weight, None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.weight * (x - self.value)


class DraftController:
    """Measures and decides; holds no model. One per speculative decoder, so what it learned
    of the costs carries over between requests, while acceptance restarts per request."""

    PRIOR_ACCEPTANCE = 0.6
    PRIOR_VERIFY_SLOPE = 0.25  # extra cost per extra verified token, as a share of one step

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config
        w = config.smoothing
        self.plain_step = _Average(w)  # seconds per plain decode step
        self.draft_token = _Average(w)  # seconds per drafted token
        self.round_time: dict[int, _Average] = {}  # k -> seconds per round (draft + verify)
        self.start_request()

    def start_request(self) -> None:
        self._accepted = self._trials = 0.0
        self.active = True
        self._plain_since_probe = 0
        self._probe_every = self.config.probe_every
        self._probing = False

    @property
    def acceptance(self) -> float:
        """Per-token acceptance, geometric estimate with a weak prior (2 pseudo-trials)."""
        return (self._accepted + 2 * self.PRIOR_ACCEPTANCE) / (self._trials + 2)

    def next_k(self) -> int:
        """Tokens to draft next; 0 means a plain decode step."""
        if self.plain_step.value is None:
            return 0  # measure plain decoding once before judging speculation against it
        if not self.config.adaptive or (self._trials == 0 and not self.round_time):
            return self.config.draft_tokens  # fixed, or the first round before any measurement
        best_k, best_rate = self.best()
        plain_rate = 1.0 / self.plain_step.value
        if self.config.self_disable and best_rate < plain_rate:
            if self._probing:  # the last probe did not pay either: probe half as often
                self._probe_every = min(2 * self._probe_every, 16 * self.config.probe_every)
            self._probing = False
            self.active = False
            self._plain_since_probe += 1
            if self._plain_since_probe <= self._probe_every:
                return 0
            self._plain_since_probe = 0
            self._probing = True
            return 1  # a cheap probe: acceptance may have changed with the text
        self.active = True
        self._probing = False
        self._probe_every = self.config.probe_every
        return best_k

    def best(self) -> tuple[int, float]:
        """(k, predicted tokens/s) maximizing the predicted rate."""
        rates = {k: self.expected_tokens(k) / self.round_cost(k)
                 for k in range(1, self.config.max_draft + 1)}
        k = max(rates, key=rates.__getitem__)
        return k, rates[k]

    def expected_tokens(self, k: int) -> float:
        a = min(self.acceptance, 0.999)
        return (1 - a ** (k + 1)) / (1 - a)

    def round_cost(self, k: int) -> float:
        measured = self.round_time.get(k)
        if measured is not None and measured.value is not None:
            return measured.value
        step = self.plain_step.value or 1e-3
        draft = (self.draft_token.value or 0.0) * k
        return draft + step * (1 + self.PRIOR_VERIFY_SLOPE * k)

    def record_plain(self, seconds: float) -> None:
        self.plain_step.add(seconds)

    def record_round(self, k: int, proposed: int, accepted: int, draft_seconds: float,
                     round_seconds: float) -> None:
        """One verification: k asked, `proposed` drafted, `accepted` kept."""
        self._accepted += accepted
        self._trials += accepted + (1 if accepted < proposed else 0)
        if proposed:
            self.draft_token.add(draft_seconds / proposed)
        self.round_time.setdefault(proposed, _Average(self.config.smoothing)).add(round_seconds)
