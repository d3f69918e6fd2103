"""Prefill and decode throughput of a loaded model (what `edge bench` prints)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import numpy as np

from edge.engine import Engine
from edge.errors import ConfigError
from edge.tokenizer import Tokenizer


@dataclass(frozen=True)
class BenchConfig:
    prompt_tokens: int = 128
    gen_tokens: int = 128
    runs: int = 3
    warmup: int = 1

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "gen_tokens", "runs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)}; must be >= 1")


@dataclass
class BenchResult:
    prefill_tps: list[float] = field(default_factory=list)
    decode_tps: list[float] = field(default_factory=list)

    @property
    def prefill_median(self) -> float:
        return statistics.median(self.prefill_tps)

    @property
    def decode_median(self) -> float:
        return statistics.median(self.decode_tps)


def bench_prompt(tokenizer: Tokenizer, n_tokens: int) -> list[int]:
    """n_tokens of real English (CPython's own documentation), the same on every machine."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))
    return tokenizer.encode(text[: n_tokens * 8], add_special_tokens=False)[:n_tokens]


def bench_engine(engine: Engine, prompt: list[int], config: BenchConfig) -> BenchResult:
    """Time prefill of `prompt` and greedy decode of `gen_tokens`, `runs` times (after warmup)."""
    if len(prompt) + config.gen_tokens > engine.max_context:
        raise ConfigError(f"prompt ({len(prompt)}) + gen ({config.gen_tokens}) tokens exceed the "
                         f"context window ({engine.max_context})")
    result = BenchResult()
    for run in range(config.warmup + config.runs):
        engine.reset()
        start = time.perf_counter()
        logits = engine.prefill(prompt)[0]
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(config.gen_tokens):
            logits = engine.decode(int(np.argmax(logits)))
        decode = time.perf_counter() - start
        if run >= config.warmup:
            result.prefill_tps.append(len(prompt) / prefill)
            result.decode_tps.append(config.gen_tokens / decode)
    return result
