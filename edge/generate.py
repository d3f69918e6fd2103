"""The generation loop: prefill, then sample and decode until a stop condition."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from edge.detokenizer import IncrementalDetokenizer, StopStringMatcher
from edge.engine import Engine
from edge.errors import ContextOverflowError, InvalidSamplingError
from edge.sampling import Sampler, SamplingConfig
from edge.tokenizer import Tokenizer


@dataclass(frozen=True)
class GenerationConfig:
    """What to generate: how many tokens, how to sample, when to stop."""

    max_tokens: int = 256
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidSamplingError(f"max_tokens={self.max_tokens!r}; must be an int >= 1")
        if any(not s for s in self.stop):
            raise InvalidSamplingError("stop strings must be non-empty")


@dataclass(frozen=True)
class GenerationResponse:
    """One generated token: its id, the text it adds, and running statistics.

    `text` may be empty (a character split over several tokens, or text held back while it
    might begin a stop string). The last response has `finish_reason` "stop" (EOS or a stop
    string) or "length" (max_tokens or the context window).
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


def stream_tokens(engine: Engine, tokenizer: Tokenizer, prompt_ids: Sequence[int],
                  config: GenerationConfig, cached_prefix: int = 0) -> Iterator[GenerationResponse]:
    """Generate after `prompt_ids`; the first `cached_prefix` of them are already in the cache."""
    if len(prompt_ids) == 0:
        raise InvalidSamplingError("the prompt is empty")
    if len(prompt_ids) >= engine.max_context:
        raise ContextOverflowError(
            f"the prompt has {len(prompt_ids)} tokens; the context window is "
            f"{engine.max_context} (and at least one token must be generated)")
    engine.rewind(cached_prefix)
    sampler = Sampler(config.sampling, engine.spec.vocab_size)
    detok = IncrementalDetokenizer(tokenizer.decode, prompt_tail=list(prompt_ids[-4:]))
    stops = StopStringMatcher(config.stop) if config.stop else None
    eos = set() if config.ignore_eos else set(tokenizer.eos_token_ids)
    history = list(prompt_ids)

    started = time.perf_counter()
    logits = engine.prefill(prompt_ids[cached_prefix:])[0]
    prefill_done = time.perf_counter()
    prompt_tps = (len(prompt_ids) - cached_prefix) / max(prefill_done - started, 1e-9)

    for n in range(1, config.max_tokens + 1):
        token, logprob = sampler.sample(logits, history)
        history.append(token)
        finish = None
        if token in eos:
            text, finish = detok.flush(), "stop"
        else:
            text = detok.push(token)
            if n == config.max_tokens or engine.position >= engine.max_context:
                text, finish = text + detok.flush(), "length"
        if stops is not None:
            text, stopped = stops.feed(text)
            if stopped:
                finish = "stop"
            elif finish:
                text += stops.flush()
        elapsed = time.perf_counter() - prefill_done
        yield GenerationResponse(token, text, logprob, len(prompt_ids), n, prompt_tps,
                                 (n - 1) / elapsed if n > 1 and elapsed > 0 else 0.0, finish)
        if finish:
            return
        logits = engine.decode(token)
