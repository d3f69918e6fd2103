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
        raise ConfigError(
            f"prompt ({len(prompt)}) + gen ({config.gen_tokens}) tokens exceed the "
            f"context window ({engine.max_context})"
        )
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


# Code prompts quote code the answer rewrites (what prompt lookup is for: edits, refactors);
# prose prompts do not, so they show what speculation gains on open-ended text.
SPECULATIVE_PROMPTS: dict[str, tuple[str, ...]] = {
    "code": (
        "Add type hints and a docstring to this function, and return the whole function:\n\n"
        "def moving_average(values, window):\n    result = []\n    total = 0\n"
        "    for i, value in enumerate(values):\n        total += value\n"
        "        if i >= window:\n            total -= values[i - window]\n"
        "        if i >= window - 1:\n            result.append(total / window)\n"
        "    return result\n",
        "Rename the variable `data` to `records` in this code and show the full result:\n\n"
        "import json\n\ndef load(path):\n    with open(path) as f:\n        data = json.load(f)\n"
        "    data = [r for r in data if r.get('active')]\n    for r in data:\n"
        "        r['name'] = r['name'].strip()\n    return sorted(data, key=lambda r: r['name'])\n",
    ),
    "prose": (
        "Explain in a few sentences why the sky is blue.",
        "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    ),
}


@dataclass(frozen=True)
class SpeculativeBenchRow:
    """`speedup` is timed here, side by side; `reported` is the median of what the responses
    themselves reported (`SpeculationStats.speedup`; None where none was measured), so a
    report that drifts from the clock shows."""

    kind: str
    plain_tps: float
    speculative_tps: float
    acceptance: float
    tokens_per_pass: float
    reported: float | None = None

    @property
    def speedup(self) -> float:
        return self.speculative_tps / self.plain_tps


def bench_speculative(
    model,
    gen_tokens: int = 128,
    runs: int = 1,
    prompts: dict[str, tuple[str, ...]] = SPECULATIVE_PROMPTS,
) -> list[SpeculativeBenchRow]:
    """Greedy decode tokens/s with and without the model's draft, per prompt kind, measured
    alternately in one process (the machines are shared; only ratios taken side by side hold)."""
    decoder = model.speculative
    if decoder is None:
        raise ConfigError("the model has no draft: load it with draft=... (edge bench --draft)")
    rows = []
    for kind, texts in prompts.items():
        plain, spec, stats = [], [], []
        for _ in range(runs):
            for text in texts:
                ids = _chat_ids(model, text)
                model.speculative = None
                plain.append(_decode_rate(model, ids, gen_tokens)[0])
                model.speculative = decoder
                rate, last = _decode_rate(model, ids, gen_tokens)
                spec.append(rate)
                stats.append(last.speculation)
        reported = [s.speedup for s in stats if s.speedup is not None]
        rows.append(
            SpeculativeBenchRow(
                kind,
                statistics.median(plain),
                statistics.median(spec),
                statistics.mean(s.acceptance for s in stats),
                statistics.mean(s.tokens_per_pass for s in stats),
                statistics.median(reported) if reported else None,
            )
        )
    return rows


def _chat_ids(model, text: str) -> list[int]:
    if model.tokenizer.has_chat_template:
        prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": text}])
        return model.tokenizer.encode(prompt, add_special_tokens=False)
    return model.tokenizer.encode(text)


def _decode_rate(model, ids: list[int], gen_tokens: int):
    """(generated tokens/s after the first token, last response), greedy, EOS ignored."""
    model.engine.reset()
    model._cached = []
    responses = model.stream(ids, max_tokens=gen_tokens, ignore_eos=True)
    next(responses)
    start = time.perf_counter()
    last = None
    for response in responses:
        last = response
    return (gen_tokens - 1) / (time.perf_counter() - start), last
