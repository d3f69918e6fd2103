"""Draft sources: who proposes the tokens the target then verifies in one pass.

Two kinds. `LookupDraft` copies what followed the latest earlier occurrence of the text's
last n-gram (prompt lookup / token recycling): free, no model, strong on code and edits where
the output repeats the input. `ModelDraft` runs a small model with the same tokenizer.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from edge.errors import ConfigError
from edge.runner import Runner
from edge.sampling import Sampler, SamplingConfig


@dataclass
class Draft:
    """Proposed tokens. The target keeps those equal to its own choices, so a proposal needs
    no distribution: how it was drafted changes only how many tokens are kept."""

    tokens: list[int]
    key: str = ""  # the kind of draft, for acceptance kept per kind ("ngram3", "model")
    source: str = ""  # the source's name ("lookup", "model")
    setup_seconds: float = 0.0  # one-off work inside the proposal (a draft model's catch-up)
    setup_tokens: int = 0  # tokens that catch-up fed

    def head(self, k: int) -> Draft:
        """The first k tokens."""
        return replace(self, tokens=self.tokens[:k])


class DraftSource(Protocol):
    """Proposes up to k tokens continuing `history` (the prompt and every committed token).

    `free` sources (lookup) cost nothing to ask for many tokens: the controller trims their
    proposal by its kind's acceptance. Others (a model) are asked for exactly the k it chose.
    """

    name: str
    free: bool

    def propose(self, history: Sequence[int], k: int) -> Draft: ...

    def reset(self) -> None: ...


@dataclass(frozen=True)
class LookupConfig:
    """`max_ngram` .. `min_ngram`: the suffix lengths tried, longest first."""

    max_ngram: int = 4
    min_ngram: int = 1

    def __post_init__(self) -> None:
        if not 1 <= self.min_ngram <= self.max_ngram:
            raise ConfigError(
                f"lookup n-grams {self.min_ngram}..{self.max_ngram}; "
                "need 1 <= min_ngram <= max_ngram"
            )


class NgramIndex:
    """n-gram -> where its latest occurrences ended (up to `keep` of them), extended as the
    history grows, so looking up the text's suffix costs dictionary accesses, not a scan of
    the history. A history that is not a continuation of the last one rebuilds it."""

    def __init__(self, max_ngram: int, keep: int = 1) -> None:
        self.max_ngram, self.keep = max_ngram, keep
        self.reset()

    def reset(self) -> None:
        self.seen: list[int] = []
        self._ends: dict[tuple[int, ...], deque[int]] = {}

    def update(self, history: Sequence[int]) -> None:
        seen = self.seen
        common = 0
        for a, b in zip(seen, history):
            if a != b:
                break
            common += 1
        if common < len(seen):  # another conversation: rebuild
            self.reset()
            seen, common = self.seen, 0
        for position in range(common, len(history)):
            seen.append(int(history[position]))
            for n in range(1, self.max_ngram + 1):
                if position - n < 0:
                    break
                key = tuple(seen[position - n : position])
                ends = self._ends.get(key)
                if ends is None:
                    ends = self._ends[key] = deque(maxlen=self.keep)
                ends.append(position)

    def ends(self, key: tuple[int, ...]) -> Sequence[int]:
        """Where `key`'s latest occurrences ended (the index of the token that followed),
        oldest first."""
        return self._ends.get(key, ())


class LookupDraft:
    """Prompt lookup: find the text's last n-gram earlier in the history, propose what followed
    (from an `NgramIndex`, so a proposal costs O(max_ngram) dictionary lookups)."""

    name = "lookup"
    free = True

    def __init__(self, config: LookupConfig | None = None) -> None:
        self.config = config or LookupConfig()
        self.reset()

    def reset(self) -> None:
        self._index = NgramIndex(self.config.max_ngram)

    def propose(self, history: Sequence[int], k: int) -> Draft:
        self._index.update(history)
        seen = self._index.seen
        for n in range(min(self.config.max_ngram, len(seen) - 1), self.config.min_ngram - 1, -1):
            ends = self._index.ends(tuple(seen[-n:]))
            if ends:
                return Draft(seen[ends[-1] : ends[-1] + k], key=f"ngram{n}", source=self.name)
        return Draft([], key="ngram0", source=self.name)


_ROUND_FEED = 2  # tokens a draft model feeds at the start of an ordinary round


class ModelDraft:
    """A small model with the target's tokenizer, drafting on its own engine (its own device,
    threads or backend). Its KV cache follows the committed history; rejected tokens are
    rolled back by rewinding."""

    name = "model"
    free = False

    def __init__(self, engine: Runner, sampling: SamplingConfig | None = None) -> None:
        self.engine = engine
        self.sampler = Sampler(sampling or SamplingConfig(), engine.spec.vocab_size)
        self._cached: list[int] = []  # tokens whose keys/values the draft's cache holds

    def reset(self) -> None:
        self._cached = []
        self.engine.reset()

    def set_sampling(self, sampling: SamplingConfig) -> None:
        """Draft as the request samples. With the target's seed (the decoder passes the one its
        sampler uses) the draft adds the target's own noise at each position to its logits:
        that coupling makes it propose the token the target will sample as often as their
        distributions allow. It cannot bias the output, which is the target's choices."""
        self.sampler = Sampler(sampling, self.engine.spec.vocab_size)

    def propose(self, history: Sequence[int], k: int) -> Draft:
        """k tokens after `history`; the draft's cache then holds history + all but the last."""
        k = min(k, self.engine.max_context - len(history))
        if k < 1:
            return Draft([], key=self.name, source=self.name)
        started = time.perf_counter()
        fed = len(history) - self._common(history)
        logits = self._catch_up(history)
        # Every round feeds up to 2 tokens (the last drafted one, if accepted, and the target's
        # own); feeding more (the prompt, or text another source drafted) is catch-up that the
        # controller must not mistake for the per-token cost of drafting.
        extra = max(0, fed - _ROUND_FEED)
        setup = (time.perf_counter() - started) * extra / fed
        tokens: list[int] = []
        context = list(history)
        for i in range(k):
            token = self.sampler.choose(logits, context, len(context))  # absolute position
            tokens.append(token)
            context.append(token)
            if i + 1 < k:
                logits = self.engine.decode(token)
                self._cached.append(token)
        return Draft(
            tokens, key=self.name, source=self.name, setup_seconds=setup, setup_tokens=extra
        )

    def behind(self, history: Sequence[int]) -> int:
        """Tokens a proposal for `history` would feed beyond an ordinary round's."""
        return max(0, len(history) - self._common(history) - _ROUND_FEED)

    def _common(self, history: Sequence[int]) -> int:
        common = 0
        for a, b in zip(self._cached, history):
            if a != b:
                break
            common += 1
        return min(common, len(history) - 1, self.engine.position)

    def _catch_up(self, history: Sequence[int]) -> np.ndarray:
        """Feed what the cache lacks of `history` (at least its last token); its logits [V]."""
        common = self._common(history)
        self.engine.rewind(common)
        logits = self.engine.prefill(list(history[common:]))[0]
        self._cached = list(history)
        return logits


class ChainedDraft:
    """Several sources asked in order: the first whose kind the controller accepts drafts.

    The usual chain is lookup, then a model: where the output copies the prompt (code edits)
    the free lookup draft is taken, and only elsewhere is the draft model's time spent.
    """

    free = False

    def __init__(self, sources: Sequence[DraftSource]) -> None:
        if not sources:
            raise ConfigError("a chained draft needs at least one source")
        self.sources = list(sources)
        self.name = "+".join(source.name for source in self.sources)

    def propose(self, history: Sequence[int], k: int) -> Draft:
        """Without a controller: the first non-empty proposal of up to k tokens."""
        for source in self.sources:
            draft = source.propose(history, k)
            if draft.tokens:
                return draft
        return Draft([], key=self.name)

    def reset(self) -> None:
        for source in self.sources:
            source.reset()
