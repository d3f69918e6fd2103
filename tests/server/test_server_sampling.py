"""Sampling and what a response says about its tokens, through the official openai client
against `edge serve`: seeds, stop limits, usage of streamed completions, top_p, and each token's
logprob with its most likely alternatives (the same log-softmax the SDK gives)."""

from __future__ import annotations

import math
from typing import Any

import pytest

openai = pytest.importorskip("openai")

from edge.model import Model  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello, world! How are you today?"}]
PROMPT = "The quick brown fox"


def test_same_seed_same_text(api: Any, tiny_id: str) -> None:
    def sample(seed: int) -> str:
        reply = api.chat.completions.create(
            model=tiny_id, messages=MESSAGES, max_tokens=32, temperature=1.0, seed=seed
        )
        return reply.choices[0].message.content

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10))


def warm(api: Any, **request: Any) -> None:
    """Send `request` for one token, so the KV cache holds its prompt: each request compared
    after it then prefills the same last token (a longer prefill rounds differently)."""
    create = api.chat.completions.create if "messages" in request else api.completions.create
    create(**{**request, "max_tokens": 1})


def test_logprobs_per_token(api: Any, tiny_id: str) -> None:
    warm(api, model=tiny_id, messages=MESSAGES)
    reply = api.chat.completions.create(
        model=tiny_id, messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True
    )
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    assert all(entry.logprob <= 0 for entry in content)
    streamed = api.chat.completions.create(
        model=tiny_id, messages=MESSAGES, max_tokens=12, temperature=0, logprobs=True, stream=True
    )
    entries = [
        e
        for c in streamed
        if c.choices and c.choices[0].logprobs
        for e in c.choices[0].logprobs.content
    ]
    assert [e.logprob for e in entries] == [e.logprob for e in content]
    legacy = api.completions.create(
        model=tiny_id, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=0
    )
    assert len(legacy.choices[0].logprobs.token_logprobs) == legacy.usage.completion_tokens


def test_max_completion_tokens_limits_the_chat_reply(api: Any, tiny_id: str) -> None:
    """OpenAI's newer name for max_tokens, which wins when both are sent: with the end of
    sequence ignored (the `ignore_eos` extension), the reply is exactly that long."""
    args = {"model": tiny_id, "messages": MESSAGES, "temperature": 0}
    for extra in ({}, {"max_tokens": 30}):
        reply = api.chat.completions.create(
            **args, max_completion_tokens=5, extra_body={"ignore_eos": True}, **extra
        )
        assert reply.usage.completion_tokens == 5
        assert reply.choices[0].finish_reason == "length"
    without = api.chat.completions.create(**args, max_completion_tokens=5)
    assert 1 <= without.usage.completion_tokens <= 5


def test_streamed_completion_ends_with_its_usage(api: Any, tiny_id: str, sdk: Model) -> None:
    """`stream_options.include_usage` on /v1/completions: every text chunk has usage null, and
    one last chunk without choices carries the counts of the whole reply."""
    args = {
        "model": tiny_id,
        "prompt": PROMPT,
        "max_tokens": 12,
        "temperature": 0,
        "extra_body": {"ignore_eos": True},
    }
    warm(api, **args)
    whole = api.completions.create(**args)
    *texts, last = api.completions.create(
        **args, stream=True, stream_options={"include_usage": True}
    )
    assert texts and all(c.usage is None for c in texts)
    assert "".join(c.choices[0].text for c in texts) == whole.choices[0].text
    assert texts[-1].choices[0].finish_reason == "length"
    assert last.choices == [] and last.id == texts[0].id
    assert (
        last.usage.prompt_tokens == whole.usage.prompt_tokens == len(sdk.tokenizer.encode(PROMPT))
    )
    assert last.usage.completion_tokens == whole.usage.completion_tokens == 12
    assert last.usage.total_tokens == last.usage.prompt_tokens + 12


def test_a_tiny_top_p_samples_the_greedy_text(api: Any, tiny_id: str) -> None:
    """top_p keeps the smallest set of most likely tokens whose probabilities add up to top_p,
    and at least one. The likeliest token alone has probability >= 1/vocabulary (384 here),
    far above 1e-6, so top_p=1e-6 keeps only it: sampling at temperature 1 with any seed then
    gives the greedy text, where top_p=1 (off) gives another for some seed."""
    args = {"model": tiny_id, "messages": MESSAGES, "max_tokens": 16}
    warm(api, **args)
    greedy = api.chat.completions.create(**args, temperature=0).choices[0].message.content

    def sampled(seed: int, top_p: float) -> str:
        reply = api.chat.completions.create(**args, temperature=1.0, seed=seed, top_p=top_p)
        return reply.choices[0].message.content

    seeds = (1, 2, 3)
    assert [sampled(seed, 1e-6) for seed in seeds] == [greedy] * len(seeds)
    assert any(sampled(seed, 1.0) != greedy for seed in seeds)


def check_top(chosen: str, logprob: float, top: list[tuple[str, float]], k: int) -> None:
    """k alternatives, most likely first, all <= 0; the chosen token, when likely enough to be
    among them, is there with the very logprob it was given. (Its text alone does not say:
    lone bytes of characters all decode to U+FFFD.)"""
    assert len(top) == k
    values = [lp for _, lp in top]
    assert values == sorted(values, reverse=True) and all(lp <= 0 for lp in values)
    if logprob >= values[-1]:
        assert logprob in [lp for text, lp in top if text == chosen]


def test_chat_top_logprobs(api: Any, tiny_id: str) -> None:
    """top_logprobs=3: three alternatives per token, from the distribution the chosen token's
    logprob is taken from; streamed alike; asking for them changes no token."""
    args = {"model": tiny_id, "messages": MESSAGES, "max_tokens": 16, "seed": 5}
    warm(api, **args)
    for temperature in (0, 1.0):
        plain = api.chat.completions.create(**args, temperature=temperature)
        reply = api.chat.completions.create(
            **args, temperature=temperature, logprobs=True, top_logprobs=3
        )
        assert reply.choices[0].message.content == plain.choices[0].message.content
        content = reply.choices[0].logprobs.content
        assert len(content) == reply.usage.completion_tokens
        for entry in content:
            top = [(t.token, t.logprob) for t in entry.top_logprobs]
            check_top(entry.token, entry.logprob, top, 3)
            assert all(t.bytes == list(t.token.encode("utf-8")) for t in entry.top_logprobs)
            if temperature == 0:  # greedy: the chosen token is the most likely
                assert entry.logprob == top[0][1]
        streamed = api.chat.completions.create(
            **args, temperature=temperature, logprobs=True, top_logprobs=3, stream=True
        )
        entries = [
            e
            for c in streamed
            if c.choices and c.choices[0].logprobs
            for e in c.choices[0].logprobs.content
        ]
        assert [e.model_dump() for e in entries] == [e.model_dump() for e in content]
    none = api.chat.completions.create(**args, logprobs=True, top_logprobs=0)
    assert all(e.top_logprobs == [] for e in none.choices[0].logprobs.content)


def test_completion_top_logprobs(api: Any, tiny_id: str) -> None:
    """logprobs=2: per position a {text: logprob} of the two most likely tokens (one key fewer
    where two share a text), beside tokens, token_logprobs and text_offset; streamed alike."""
    args = {"model": tiny_id, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
    warm(api, **args)
    reply = api.completions.create(**args, logprobs=2)
    logprobs = reply.choices[0].logprobs
    n = reply.usage.completion_tokens
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == n
    offsets = logprobs.text_offset
    assert (
        offsets[0] == 0 and offsets == sorted(offsets) and offsets[-1] <= len(reply.choices[0].text)
    )
    for token, logprob, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs):
        assert 1 <= len(top) <= 2
        values = list(top.values())
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert top[token] == logprob == values[0]  # greedy: the most likely
    streamed = api.completions.create(**args, logprobs=2, stream=True)
    pieces = [c.choices[0].logprobs for c in streamed if c.choices and c.choices[0].logprobs]
    assert [p.top_logprobs[0] for p in pieces] == logprobs.top_logprobs
    assert [p.text_offset[0] for p in pieces] == logprobs.text_offset
    own = api.completions.create(**args, logprobs=0).choices[0].logprobs
    assert own.top_logprobs is None and own.token_logprobs == logprobs.token_logprobs


def test_sdk_top_logprobs_leave_the_tokens(sdk: Model) -> None:
    """`Model.stream(top_logprobs=k)`: the same tokens and logprobs, each response carrying
    the k most likely (id, logprob), the chosen token's equal to its own."""
    kwargs = {"max_tokens": 12, "temperature": 0.8, "seed": 3, "ignore_eos": True}
    list(sdk.stream(PROMPT, max_tokens=1))  # as `warm`: both prefill the same last token
    plain = list(sdk.stream(PROMPT, **kwargs))
    top = list(sdk.stream(PROMPT, top_logprobs=4, **kwargs))
    assert [(r.token, r.logprob) for r in top] == [(r.token, r.logprob) for r in plain]
    assert all(r.top_logprobs is None for r in plain)
    for r in top:
        assert r.top_logprobs is not None and len(r.top_logprobs) == 4
        assert len({i for i, _ in r.top_logprobs}) == 4
        values = [lp for _, lp in r.top_logprobs]
        assert values == sorted(values, reverse=True) and sum(math.exp(v) for v in values) <= 1
        if r.logprob >= values[-1]:
            assert (r.token, r.logprob) in r.top_logprobs
