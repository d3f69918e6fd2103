"""OpenAI's response shapes, built from edge's generation events: whole responses, streamed
chunks, usage and logprobs. Pure functions, so the shapes are tested without a model."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edge.generate import GenerationResponse
    from edge.server.worker import Finished

Decode = Callable[[list[int]], str]


@dataclass(frozen=True)
class Reply:
    """What every chunk of one response repeats: its id, kind, time and model."""

    kind: str  # "chat.completion" or "text_completion"
    model: str
    id: str
    created: int

    @classmethod
    def new(cls, kind: str, model: str) -> Reply:
        prefix = "chatcmpl" if kind == "chat.completion" else "cmpl"
        return cls(kind, model, f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()))

    @property
    def chat(self) -> bool:
        return self.kind == "chat.completion"

    def head(self, chunk: bool) -> dict[str, Any]:
        kind = self.kind + ".chunk" if chunk and self.chat else self.kind
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model}


def usage(done: Finished) -> dict[str, Any]:
    return {
        "prompt_tokens": done.prompt_tokens,
        "completion_tokens": done.completion_tokens,
        "total_tokens": done.prompt_tokens + done.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": done.cached_tokens},
    }


def token_logprob(response: GenerationResponse, decode: Decode) -> dict[str, Any]:
    """A chat logprobs entry: the token's text, logprob and UTF-8 bytes, and its most likely
    alternatives in the same shape (empty unless top_logprobs was asked for)."""
    return {
        **_token_entry(response.token, response.logprob, decode),
        "top_logprobs": [
            _token_entry(token, logprob, decode) for token, logprob in response.top_logprobs or ()
        ],
    }


def _token_entry(token: int, logprob: float, decode: Decode) -> dict[str, Any]:
    text = decode([token])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def _top_dict(response: GenerationResponse, decode: Decode) -> dict[str, float]:
    """Completions' alternatives: {text: logprob}, most likely first. Two ids with the same
    text (a lone byte of a character decodes to U+FFFD) share a key: the likelier one's."""
    top: dict[str, float] = {}
    for token, logprob in response.top_logprobs or ():
        top.setdefault(decode([token]), logprob)
    return top


def whole(
    reply: Reply,
    text: str,
    done: Finished,
    logprobs: list[GenerationResponse] | None,
    decode: Decode,
) -> dict[str, Any]:
    """The non-streamed response."""
    if reply.chat:
        choice: dict[str, Any] = {
            "index": 0,
            "message": {"role": "assistant", "content": text, "refusal": None},
            "logprobs": (
                {"content": [token_logprob(r, decode) for r in logprobs], "refusal": None}
                if logprobs is not None
                else None
            ),
            "finish_reason": done.finish_reason,
        }
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": completion_logprobs(logprobs, decode) if logprobs is not None else None,
            "finish_reason": done.finish_reason,
        }
    return {**reply.head(chunk=False), "choices": [choice], "usage": usage(done)}


def completion_logprobs(
    responses: list[GenerationResponse], decode: Decode, offset: int = 0
) -> dict[str, Any]:
    """Completions' logprobs of `responses`, the first at text `offset`: top_logprobs is null
    unless alternatives were asked for (logprobs >= 1). An offset counts the text emitted
    before its token, so it points into the returned text, streamed or not, even where a
    token alone is no character (a byte of one decodes to U+FFFD)."""
    tokens = [decode([r.token]) for r in responses]
    offsets, at = [], offset
    for r in responses:
        offsets.append(at)
        at += len(r.text)
    top = any(r.top_logprobs is not None for r in responses)
    return {
        "tokens": tokens,
        "token_logprobs": [r.logprob for r in responses],
        "top_logprobs": [_top_dict(r, decode) for r in responses] if top else None,
        "text_offset": offsets,
    }


def chunk(
    reply: Reply,
    text: str | None,
    *,
    role: bool = False,
    finish_reason: str | None = None,
    logprob: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> bytes:
    """One server-sent event carrying a streamed piece (`text`, the role, or the end), with
    `extra` fields (usage). `logprob` is the piece's token: a chat entry (`token_logprob`) or
    completions' logprobs of one token (`completion_logprobs`)."""
    if reply.chat:
        delta: dict[str, Any] = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice: dict[str, Any] = {
            "index": 0,
            "delta": delta,
            "logprobs": {"content": [logprob], "refusal": None} if logprob else None,
            "finish_reason": finish_reason,
        }
    else:
        choice = {
            "index": 0,
            "text": text or "",
            "logprobs": logprob or None,
            "finish_reason": finish_reason,
        }
    return event({**reply.head(chunk=True), "choices": [choice], **(extra or {})})


def usage_chunk(reply: Reply, done: Finished) -> bytes:
    """The extra last chunk of stream_options.include_usage: no choices, the usage."""
    return event({**reply.head(chunk=True), "choices": [], "usage": usage(done)})


def event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode("utf-8") + b"\n\n"


DONE = b"data: [DONE]\n\n"


def error_event(body: dict[str, Any]) -> bytes:
    """An error after the stream began (the status line is sent): an event with its body."""
    return event(body)
