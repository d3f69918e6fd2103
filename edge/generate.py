"""The generation loop: prefill, then sample and decode until a stop condition."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.detokenizer import IncrementalDetokenizer, StopStringMatcher
from edge.engine import Engine
from edge.errors import ContextOverflowError, InvalidSamplingError
from edge.sampling import Sampler, SamplingConfig, TopLogprobs
from edge.tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate: how many tokens, how to sample, when to stop, and how many of the
    most likely alternatives to report with each token (`top_logprobs`; 0: none, no cost)."""

    max_tokens: int = 256
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    top_logprobs: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidSamplingError(f"max_tokens={self.max_tokens!r}; must be an int >= 1")
        k = self.top_logprobs
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InvalidSamplingError(f"top_logprobs={k!r}; must be an int >= 0")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InvalidSamplingError(
                f"stop={self.stop!r}; stop strings must be non-empty strings"
            )


@dataclass(frozen=True)
class GenerationResponse:
    """One generated token: its id, the text it adds, and running statistics.

    `text` may be empty (a character split over several tokens, or text held back while it
    might begin a stop string). The last response has `finish_reason` "stop" (EOS or a stop
    string) or "length" (max_tokens or the context window).

    `logprob` is log_softmax of the model's raw logits at the chosen token (before repetition
    penalty, temperature and filters); `top_logprobs`, when asked for, holds the k most likely
    (token id, logprob) of that same distribution, most likely first, else None.
    """

    token: int
    text: str
    logprob: float
    prompt_tokens: int
    generation_tokens: int
    prompt_tps: float
    generation_tps: float
    finish_reason: str | None = None
    from_draft: bool = False
    # Speculative decoding only: acceptance so far, tokens per target pass, measured speedup.
    speculation: SpeculationStats | None = None
    top_logprobs: TopLogprobs | None = None


@dataclass(frozen=True)
class SpeculationStats:
    """Running figures of a speculative generation, for `stream` consumers and `--stats`.

    `speedup` is measured, not predicted: the time plain decoding would have taken for the
    `tokens` so far (plain steps of this target that this process timed, plus the same
    per-token output work) over the time this response took for them, all that speculation
    costs included (drafting, the draft model's prompt prefill and catch-up, verification,
    rejected tokens, waiting on lookahead threads) but not the time the caller held each
    response. Below 1 speculation lost. None until this process has timed a plain step (the
    decoder takes one first): a remembered one may have run under other load.
    """

    drafted: int  # draft tokens proposed to the target
    accepted: int  # of those, accepted
    target_passes: int  # target forward passes (verifications and plain decode steps)
    tokens: int  # tokens committed by those passes
    speedup: float | None  # plain decoding's time for `tokens` over this response's
    active: bool  # False once speculation switched itself off for this request
    by_source: tuple[tuple[str, int, int], ...] = ()  # (source, drafted, accepted) each

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.tokens / self.target_passes if self.target_passes else 0.0


class ResponseEmitter:
    """Turns chosen tokens into `GenerationResponse`s: detokenizes, applies EOS, stop strings,
    max_tokens and the context limit. Plain and speculative decoding share it, so both stop
    and count exactly alike."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        prompt_ids: Sequence[int],
        config: GenerationConfig,
        max_context: int,
        prompt_tps: float,
    ) -> None:
        self.config = config
        self.max_context = max_context
        self.prompt_tokens = len(prompt_ids)
        self.prompt_tps = prompt_tps
        self.detok = IncrementalDetokenizer(tokenizer.decode, prompt_tail=list(prompt_ids[-4:]))
        self.stops = StopStringMatcher(config.stop) if config.stop else None
        self.eos = set() if config.ignore_eos else set(tokenizer.eos_token_ids)
        self.history = list(prompt_ids)
        self.generated = 0
        self.started = time.perf_counter()

    def emit(
        self,
        token: int,
        logprob: float,
        from_draft: bool = False,
        speculation: SpeculationStats | None = None,
        top_logprobs: TopLogprobs | None = None,
    ) -> GenerationResponse:
        """The response for the next token; its `finish_reason` says whether to stop."""
        self.history.append(token)
        self.generated = n = self.generated + 1
        finish = None
        if token in self.eos:
            text, finish = self.detok.flush(), "stop"
        else:
            text = self.detok.push(token)
            # The cache can take one token more than it holds when the last one is fed.
            if n == self.config.max_tokens or len(self.history) > self.max_context:
                text, finish = text + self.detok.flush(), "length"
        if self.stops is not None:
            text, stopped = self.stops.feed(text)
            if stopped:
                finish = "stop"
            elif finish:
                text += self.stops.flush()
        elapsed = time.perf_counter() - self.started
        return GenerationResponse(
            token,
            text,
            logprob,
            self.prompt_tokens,
            n,
            self.prompt_tps,
            (n - 1) / elapsed if n > 1 and elapsed > 0 else 0.0,
            finish,
            from_draft,
            speculation,
            top_logprobs,
        )


def check_prompt(prompt_ids: Sequence[int], max_context: int) -> None:
    if len(prompt_ids) == 0:
        raise InvalidSamplingError("the prompt is empty")
    if len(prompt_ids) >= max_context:
        raise ContextOverflowError(
            f"the prompt has {len(prompt_ids)} tokens; the context window is "
            f"{max_context} (and at least one token must be generated)"
        )


def prefill_prompt(
    engine: Engine, prompt_ids: Sequence[int], cached_prefix: int
) -> tuple[np.ndarray, float]:
    """Feed the uncached part of the prompt; (last logits [V], prompt tokens per second)."""
    engine.rewind(cached_prefix)
    started = time.perf_counter()
    logits = engine.prefill(prompt_ids[cached_prefix:])[0]
    elapsed = time.perf_counter() - started
    return logits, (len(prompt_ids) - cached_prefix) / max(elapsed, 1e-9)


def stream_tokens(
    engine: Engine,
    tokenizer: Tokenizer,
    prompt_ids: Sequence[int],
    config: GenerationConfig,
    cached_prefix: int = 0,
) -> Iterator[GenerationResponse]:
    """Generate after `prompt_ids`; the first `cached_prefix` of them are already in the cache."""
    check_prompt(prompt_ids, engine.max_context)
    sampler = Sampler(config.sampling, engine.spec.vocab_size)
    logits, prompt_tps = prefill_prompt(engine, prompt_ids, cached_prefix)
    out = ResponseEmitter(tokenizer, prompt_ids, config, engine.max_context, prompt_tps)
    while True:
        # The token's absolute position keys its sampling noise, as in speculative decoding.
        token, logprob = sampler.sample(logits, out.history, len(out.history))
        top = None
        if config.top_logprobs:  # after the choice, from the same logits: tokens do not change
            logprob, top = sampler.logprobs(logits, token, config.top_logprobs)
        response = out.emit(token, logprob, top_logprobs=top)
        yield response
        if response.finish_reason:
            return
        logits = engine.decode(token)
