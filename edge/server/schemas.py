"""The two request bodies, read from JSON into frozen dataclasses and checked field by field.

A wrong type or range is an `InvalidRequestError` naming the parameter (400), before the
request waits in the queue; fields OpenAI defines that this server does not use are ignored,
as llama.cpp's and Ollama's servers ignore them, unless ignoring one would change the answer
(n > 1, best_of > 1, echo, suffix): those are refused. Logprobs follow OpenAI's limits: chat's
`top_logprobs` is 0..20 and needs `logprobs: true`; completions' `logprobs` is 0..5.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge.server.errors import InvalidRequestError

MAX_STOP = 16  # OpenAI allows 4; clients that send more still get an answer
MAX_BODY = 8 << 20  # bytes: a prompt far beyond any context window is refused unread
MAX_TOP_LOGPROBS = 20  # chat's top_logprobs, as OpenAI caps it
MAX_COMPLETION_LOGPROBS = 5  # completions' logprobs, as OpenAI caps it


@dataclass(frozen=True)
class Sampling:
    """The generation parameters both endpoints share, as `Model.stream` takes them."""

    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: tuple[str, ...]
    logprobs: bool
    ignore_eos: bool = False  # an extension (llama.cpp's and vLLM's servers have it too)
    top_logprobs: int = 0  # alternatives per token, with logprobs

    def stream_kwargs(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "seed": self.seed,
            "stop": self.stop,
            "ignore_eos": self.ignore_eos,
            "top_logprobs": self.top_logprobs,
        }


@dataclass(frozen=True)
class ChatRequest:
    model: str
    messages: tuple[dict[str, str], ...]
    sampling: Sampling
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class CompletionRequest:
    model: str
    prompt: str | tuple[int, ...]
    sampling: Sampling
    stream: bool
    include_usage: bool


def parse_json(body: bytes) -> dict[str, Any]:
    """The request body as a JSON object."""
    if len(body) > MAX_BODY:
        raise InvalidRequestError(f"the request body is {len(body)} bytes; at most {MAX_BODY}")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequestError(
            f"the request body is not valid JSON ({exc!s:.200}); send a JSON object"
        ) from None
    if not isinstance(data, dict):
        raise InvalidRequestError("the request body must be a JSON object")
    return data


def parse_chat(data: Mapping[str, Any]) -> ChatRequest:
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequestError("'messages' must be a non-empty array", "messages")
    logprobs = _bool(data, "logprobs")
    top = _count(data, "top_logprobs", MAX_TOP_LOGPROBS)
    if top and not logprobs:
        raise InvalidRequestError(
            "top_logprobs needs logprobs: true (the alternatives come with each token's logprob)",
            "top_logprobs",
        )
    return ChatRequest(
        model=_model(data),
        messages=tuple(_message(m, i) for i, m in enumerate(messages)),
        sampling=_sampling(
            data,
            max_tokens=_first(data, "max_completion_tokens", "max_tokens"),
            logprobs=logprobs,
            top_logprobs=top or 0,
        ),
        stream=_bool(data, "stream"),
        include_usage=_include_usage(data),
    )


def parse_completion(data: Mapping[str, Any]) -> CompletionRequest:
    for name in ("echo",):
        if data.get(name):
            raise InvalidRequestError(f"{name} is not supported", name)
    if data.get("suffix"):
        raise InvalidRequestError("suffix (fill-in-the-middle) is not supported", "suffix")
    if data.get("best_of") not in (None, 1):
        raise InvalidRequestError("best_of must be 1", "best_of")
    # null: none; 0: each token's own logprob; N: and its N most likely alternatives
    logprobs = _count(data, "logprobs", MAX_COMPLETION_LOGPROBS)
    # OpenAI's default for completions is 16 tokens
    max_tokens = data.get("max_tokens", 16)
    return CompletionRequest(
        model=_model(data),
        prompt=_prompt(data.get("prompt")),
        sampling=_sampling(
            data,
            max_tokens={"max_tokens": max_tokens},
            logprobs=logprobs is not None,
            top_logprobs=logprobs or 0,
        ),
        stream=_bool(data, "stream"),
        include_usage=_include_usage(data),
    )


def _model(data: Mapping[str, Any]) -> str:
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequestError("'model' must be a model's name (GET /v1/models)", "model")
    return model


def _message(message: object, index: int) -> dict[str, str]:
    param = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequestError(f"{param} must be an object with 'role' and 'content'", param)
    role = message.get("role")
    if role not in ("system", "developer", "user", "assistant"):
        raise InvalidRequestError(
            f"{param}.role is {role!r}; expected system, developer, user or assistant",
            f"{param}.role",
        )
    content = message.get("content")
    if isinstance(content, list):  # content parts: only text ones
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise InvalidRequestError(
                    f"{param}.content: only text parts are supported", f"{param}.content"
                )
            texts.append(_text(part.get("text"), f"{param}.content"))
        content = "".join(texts)
    elif content is None and role == "assistant":
        content = ""
    return {"role": "system" if role == "developer" else role, "content": _text(content, param)}


def _text(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise InvalidRequestError(f"{param} must be a string", param)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequestError(f"{param} is not valid UTF-8 text", param) from None
    return value


def _prompt(prompt: object) -> str | tuple[int, ...]:
    if isinstance(prompt, list) and len(prompt) == 1 and not _is_int(prompt[0]):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str):
        return _text(prompt, "prompt")
    if isinstance(prompt, list) and prompt and all(_is_int(t) for t in prompt):
        return tuple(prompt)
    raise InvalidRequestError(
        "'prompt' must be a string or an array of token ids (one prompt per request)", "prompt"
    )


def _sampling(
    data: Mapping[str, Any], max_tokens: Mapping[str, Any], logprobs: bool, top_logprobs: int
) -> Sampling:
    if data.get("n") not in (None, 1):
        raise InvalidRequestError("n must be 1: this server generates one choice", "n")
    ((max_name, max_value),) = max_tokens.items() or (("max_tokens", None),)
    if max_value is not None and (not _is_int(max_value) or max_value < 1):
        raise InvalidRequestError(f"{max_name} must be an integer >= 1", max_name)
    return Sampling(
        max_tokens=max_value,
        temperature=_number(data, "temperature", 1.0, 0.0, 2.0),
        top_p=_number(data, "top_p", 1.0, 0.0, 1.0, open_low=True),
        seed=_seed(data.get("seed")),
        stop=_stop(data.get("stop")),
        logprobs=logprobs,
        ignore_eos=_bool(data, "ignore_eos"),
        top_logprobs=top_logprobs,
    )


def _first(data: Mapping[str, Any], *names: str) -> dict[str, Any]:
    """{name: value} of the first of `names` present and not null, or {}."""
    for name in names:
        if data.get(name) is not None:
            return {name: data[name]}
    return {}


def _number(
    data: Mapping[str, Any], name: str, default: float, low: float, high: float, open_low=False
) -> float:
    value = data.get(name)
    if value is None:
        return default
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value > high or value < low or (open_low and value == low):
        bound = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise InvalidRequestError(f"{name}={value!r} must be a number in {bound}", name)
    return float(value)


def _count(data: Mapping[str, Any], name: str, high: int) -> int | None:
    """`data[name]` as an integer in [0, high], or None when absent or null."""
    value = data.get(name)
    if value is None:
        return None
    if not _is_int(value) or not 0 <= value <= high:
        raise InvalidRequestError(f"{name}={value!r} must be an integer in [0, {high}]", name)
    return int(value)


def _seed(seed: object) -> int | None:
    if seed is None:
        return None
    if not _is_int(seed):
        raise InvalidRequestError("seed must be an integer", "seed")
    return int(seed) % (1 << 64)  # OpenAI allows negative seeds; each stays distinct


def _stop(stop: object) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > MAX_STOP:
        raise InvalidRequestError(
            f"stop must be a string or an array of at most {MAX_STOP} strings", "stop"
        )
    for s in stops:
        if not isinstance(s, str) or not s:
            raise InvalidRequestError("each stop sequence must be a non-empty string", "stop")
    return tuple(stops)


def _bool(data: Mapping[str, Any], name: str) -> bool:
    value = data.get(name)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise InvalidRequestError(f"{name} must be true or false", name)
    return value


def _include_usage(data: Mapping[str, Any]) -> bool:
    options = data.get("stream_options")
    if options is None:
        return False
    if not isinstance(options, dict):
        raise InvalidRequestError("stream_options must be an object", "stream_options")
    return _bool(options, "include_usage")


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
