"""How many tokens to draft next, from measured acceptance and measured costs.

A round that drafts k tokens commits E(k) = (1 - a^(k+1)) / (1 - a) tokens on average
(acceptance a per token, plus the target's own token) and costs k drafted tokens plus one
target pass over k+1 tokens, which costs a plain step times (1 + slope * k): the slope is
fitted from the verification passes measured so far (about 0.19 for an int4 1.5B on 2 cores).
Plain decoding commits 1 token per target step. The controller picks the k with the best tokens
per second and, when no k beats plain decoding, drafts nothing (probing again now and then,
since acceptance changes with the text). A kind is also switched off when its rounds, measured
with all they cost (drafting, a draft model's catch-up, verification), commit fewer tokens per
second than plain steps do: the prediction's model of costs can be wrong, the clock is not.

Every comparison is against plain steps this process measured, first thing and again every
`remeasure_every` rounds: a plain step remembered from another process (a calibration file) or
measured once long ago may have run under other load, and a stale, slow one makes every draft
look like a win, so the draft stays on and the stale value is never measured again.

Acceptance is kept per *kind* of draft (`Draft.key`): a prompt-lookup draft that matched the
last 4 tokens is right far more often than one that matched 1, and a draft model differs again.
So each kind gets its own k, and kinds that lose are switched off on their own. What a kind's
acceptance was carries into the next request with the weight of a few trials only, so a new
text re-teaches it quickly.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import ConfigError
from edge.speculative.calibration import Calibration
from edge.speculative.token_tree import TreeConfig


@dataclass(frozen=True)
class SpeculativeConfig:
    """`draft_tokens`: k when not adaptive, the first k tried when adaptive (<= max_draft).

    `parallel` overlaps drafting with verification (PEARL): while the target verifies a
    draft, the draft model drafts the next tokens assuming all are accepted. `lookup_first`
    puts free prompt-lookup drafts before a draft model, which then runs only where no
    lookup draft is taken.
    """

    draft_tokens: int = 4
    max_draft: int = 12
    adaptive: bool = True
    parallel: bool = False
    lookup_first: bool = True
    # Verify token trees (lookup continuations and recycled target candidates) in one pass
    # before any chain draft; None: chains only. Needs a target loaded with tree_verify.
    tree: TreeConfig | None = None
    self_disable: bool = True
    probe_every: int = 16  # declined drafts of one kind between probes while it is off
    remeasure_every: int = 32  # drafted rounds between plain steps that re-measure plain decoding
    smoothing: float = 0.3  # weight of the newest measurement in running averages

    def __post_init__(self) -> None:
        if not 1 <= self.max_draft <= 64:
            raise ConfigError(f"max_draft={self.max_draft}; must be in 1..64")
        if not 1 <= self.draft_tokens <= self.max_draft:
            raise ConfigError(
                f"draft_tokens={self.draft_tokens}; must be in 1..max_draft ({self.max_draft})"
            )
        if self.probe_every < 1:
            raise ConfigError(f"probe_every={self.probe_every}; must be >= 1")
        if self.remeasure_every < 1:
            raise ConfigError(f"remeasure_every={self.remeasure_every}; must be >= 1")
        if not 0 < self.smoothing <= 1:
            raise ConfigError(f"smoothing={self.smoothing}; must be in (0, 1]")
        if self.tree is not None and not isinstance(self.tree, TreeConfig):
            raise ConfigError(f"tree={self.tree!r}; must be a TreeConfig or None")


class _Average:
    """Exponential moving average; `None` until the first sample."""

    def __init__(self, weight: float) -> None:
        self.weight, self.value = weight, None

    def add(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self.weight * (x - self.value)


class _Kind:
    """One kind of draft: its acceptance and, within a request, its on/off probing state."""

    REMEMBERED_TRIALS = 8.0  # the weight earlier requests' acceptance keeps in a new one

    def __init__(self, probe_every: int, smoothing: float) -> None:
        self.accepted = self.trials = 0.0
        # the best acceptance a whole earlier request measured: text differs from request to
        # request (code vs prose), and the blend of earlier requests under-rates a good one
        self.best_seen = 0.0
        self.request_accepted = self.request_trials = 0.0
        # this request's rounds: tokens/s with all costs in (drafting, recurring catch-up,
        # verification)
        self.realized = _Average(smoothing)
        self.start(probe_every)

    def start(self, probe_every: int) -> None:
        """A new request: forget the probing state, keep the acceptance at a low weight."""
        if self.request_trials >= self.REMEMBERED_TRIALS:
            self.best_seen = max(self.best_seen, self.request_accepted / self.request_trials)
        self.request_accepted = self.request_trials = 0.0
        self.probed_behind = False
        if self.trials > self.REMEMBERED_TRIALS:
            self.accepted *= self.REMEMBERED_TRIALS / self.trials
            self.trials = self.REMEMBERED_TRIALS
        self.probing = False
        self.declined = 0  # drafts of this kind turned down since the last probe
        self.probe_every = probe_every
        self.realized.value, self.rounds = None, 0


class DraftController:
    """Measures and decides; holds no model. One per speculative decoder, so what it learned
    of the costs carries over between requests, and acceptance too, at a lighter weight."""

    PRIOR_ACCEPTANCE = 0.6
    PRIOR_VERIFY_SLOPE = 0.25  # extra cost per extra verified token, as a share of one step
    MEASURED_ROUNDS = 3  # rounds of a kind before its measured rate may switch it off

    def __init__(self, config: SpeculativeConfig) -> None:
        self.config = config
        w = config.smoothing
        self.plain_step = _Average(w)  # seconds per plain decode step (and its sampling)
        self.plain_measured = 0  # plain steps this process measured (a restored value is none)
        self.since_plain = 0  # drafted rounds since the last plain step
        self.verify_slope = _Average(w)  # (verify pass / plain step - 1) / drafted tokens
        self.draft_token: dict[str, _Average] = {}  # kind -> seconds per drafted token
        self.catch_up_token = _Average(w)  # seconds per token a draft model catches up on
        self.kinds: dict[str, _Kind] = {}
        self.start_request()

    def start_request(self) -> None:
        for kind in self.kinds.values():
            kind.start(self.config.probe_every)
        self.active = True  # whether the last decision drafted anything

    def plain_due(self) -> bool:
        """Whether the next step should be a plain one, to measure plain decoding: not measured
        by this process yet, or `remeasure_every` drafted rounds ago (load and context length
        change what a step costs). Costs at most the gain of one round in that many."""
        return self.plain_measured == 0 or self.since_plain >= self.config.remeasure_every

    def _kind(self, key: str) -> _Kind:
        kind = self.kinds.get(key)
        if kind is None:
            kind = self.kinds[key] = _Kind(self.config.probe_every, self.config.smoothing)
        return kind

    def acceptance(self, key: str = "") -> float:
        """Per-token acceptance of a kind, geometric estimate with a weak prior (2 trials)."""
        kind = self.kinds.get(key)
        accepted, trials = (kind.accepted, kind.trials) if kind else (0.0, 0.0)
        return (accepted + 2 * self.PRIOR_ACCEPTANCE) / (trials + 2)

    def next_k(self, key: str = "", catch_up: int = 0, remaining: int | None = None) -> int:
        """Tokens to draft next of this kind; 0 means a plain decode step.

        `catch_up`: tokens a draft model must first feed (the prompt, or text decoded while it
        was off); it is engaged only if its predicted gain over the `remaining` tokens of the
        request pays for that.
        """
        if self.plain_step.value is None:
            self.active = False
            return 0  # measure plain decoding once before judging speculation against it
        kind = self._kind(key)
        if not self.config.adaptive or (kind.trials == 0 and self.verify_slope.value is None):
            self.active = True
            return self.config.draft_tokens  # fixed, or the first round before any measurement
        if (
            self.config.self_disable
            and catch_up
            and remaining is not None
            and not self._pays_back(key, catch_up, remaining)
        ):
            # Once per request, before this request measured the kind: probe if the best
            # acceptance an earlier request saw would pay (else a request of another kind of
            # text would keep a good draft off for good, never measuring it).
            best = kind.best_seen
            if (
                kind.rounds
                or kind.probed_behind
                or not self._pays_back(key, catch_up, remaining, best)
            ):
                self.active = False
                return 0
            kind.probed_behind = self.active = True
            return self.best(key, best)[0]
        best_k, best_rate = self.best(key)
        plain_rate = 1.0 / self.plain_step.value
        predicted_loss = best_rate < plain_rate
        # The prediction leaves out what its model of costs does not hold (a draft model
        # catching up on text lookup drafted, a draft slower than its per-token average, cache
        # effects); the rounds' measured rate, which includes it all, may overrule it.
        measured_loss = (
            kind.rounds >= self.MEASURED_ROUNDS
            and kind.realized.value is not None
            and kind.realized.value < plain_rate
        )
        if self.config.self_disable and (predicted_loss or measured_loss):
            self.active = False
            if kind.probing:  # the last probe did not pay either: probe half as often
                kind.probe_every = min(2 * kind.probe_every, 16 * self.config.probe_every)
            kind.probing = False
            kind.declined += 1
            if kind.declined <= kind.probe_every:
                return 0
            kind.declined = 0
            kind.probing = True
            self.active = True
            # a probe: acceptance may have changed with the text (the cheapest when predicted
            # to lose; the best k when only the measurements said so, to measure it again)
            return 1 if predicted_loss else best_k
        kind.probing = False
        kind.probe_every = self.config.probe_every
        self.active = True
        return best_k

    def _pays_back(
        self, key: str, catch_up: int, remaining: int, acceptance: float | None = None
    ) -> bool:
        """Whether drafting from here saves more time than catching up costs (unknown costs
        count as paying: they are learned by trying)."""
        per_token = self.catch_up_token.value
        if per_token is None or self.plain_step.value is None:
            return True
        rate = self.best(key, acceptance)[1]
        saved = remaining * (self.plain_step.value - 1.0 / rate)
        return saved > catch_up * per_token

    def best(self, key: str = "", acceptance: float | None = None) -> tuple[int, float]:
        """(k, predicted tokens/s) maximizing the predicted rate for a kind (at its measured
        acceptance, or at `acceptance`)."""
        rates = {
            k: self.expected_tokens(k, key, acceptance) / self.round_cost(k, key)
            for k in range(1, self.config.max_draft + 1)
        }
        k = max(rates, key=rates.__getitem__)
        return k, rates[k]

    def expected_tokens(self, k: int, key: str = "", acceptance: float | None = None) -> float:
        a = min(self.acceptance(key) if acceptance is None else acceptance, 0.999)
        return (1 - a ** (k + 1)) / (1 - a)

    def round_cost(self, k: int, key: str = "") -> float:
        """Predicted seconds of a round drafting k tokens of this kind."""
        step = self.plain_step.value or 1e-3
        slope = self.verify_slope.value
        slope = self.PRIOR_VERIFY_SLOPE if slope is None else slope
        draft = self.draft_token.get(key)
        per_token = draft.value if draft is not None and draft.value is not None else 0.0
        return per_token * k + step * (1 + slope * k)

    def snapshot(self) -> Calibration:
        """What was learned, to carry into another process (see `calibration`)."""
        return Calibration(
            self.plain_step.value,
            self.verify_slope.value,
            {key: a.value for key, a in self.draft_token.items() if a.value is not None},
            {key: (kind.accepted, kind.trials) for key, kind in self.kinds.items()},
            self.catch_up_token.value,
            {key: kind.best_seen for key, kind in self.kinds.items() if kind.best_seen},
        )

    def restore(self, calibration: Calibration) -> None:
        """Start from an earlier process's measurements; new ones soon outweigh them."""
        self.plain_step.value = calibration.plain_step
        self.verify_slope.value = calibration.verify_slope
        self.catch_up_token.value = calibration.catch_up_token
        for key, seconds in calibration.draft_token.items():
            self.draft_token.setdefault(key, _Average(self.config.smoothing)).value = seconds
        for key, (accepted, trials) in calibration.acceptance.items():
            kind = self._kind(key)
            kind.accepted, kind.trials = accepted, trials
            kind.best_seen = calibration.best_seen.get(key, 0.0)
            kind.start(self.config.probe_every)

    def record_plain(self, seconds: float) -> None:
        """A plain step of the target (decode and sampling) measured by this process; its first
        replaces a restored value rather than blending with it."""
        if self.plain_measured == 0:
            self.plain_step.value = seconds
        else:
            self.plain_step.add(seconds)
        self.plain_measured += 1
        self.since_plain = 0

    def record_catch_up(self, tokens: int, seconds: float) -> None:
        if tokens > 0:
            self.catch_up_token.add(seconds / tokens)

    def record_round(
        self,
        key: str,
        proposed: int,
        accepted: int,
        draft_seconds: float,
        verify_seconds: float,
        catch_up_seconds: float = 0.0,
    ) -> None:
        """One verification of `proposed` drafted tokens of a kind, `accepted` of them kept.

        draft_seconds is the drafting proper; catch_up_seconds a draft model feeding text it
        did not draft (recurring in a lookup-then-model chain); verify_seconds the target's
        pass. The caller leaves a request's first catch-up (the prompt's prefill) out: once
        paid it is sunk, and counting it would switch off a draft whose rounds win. It is
        charged where it can still be saved, when deciding to engage a draft model that is
        behind (`record_catch_up`, `next_k`'s catch_up), and in the response's speedup.
        """
        if proposed < 1:
            return
        self.since_plain += 1
        kind = self._kind(key)
        kind.rounds += 1
        kind.realized.add((accepted + 1) / (draft_seconds + catch_up_seconds + verify_seconds))
        trials = accepted + (1 if accepted < proposed else 0)
        kind.accepted += accepted
        kind.trials += trials
        kind.request_accepted += accepted
        kind.request_trials += trials
        self.draft_token.setdefault(key, _Average(self.config.smoothing)).add(
            draft_seconds / proposed
        )
        if self.plain_step.value:
            self.verify_slope.add(max(0.0, verify_seconds / self.plain_step.value - 1) / proposed)
