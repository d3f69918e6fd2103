"""Request bodies read into dataclasses: what is accepted, and the parameter each refusal names."""

from __future__ import annotations

from typing import Any

import pytest

from edge.server.config import ServeConfig, is_loopback, model_id
from edge.server.errors import InvalidRequestError
from edge.server.schemas import MAX_BODY, parse_chat, parse_completion, parse_json

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> Any:
    return parse_chat({"model": "m", "messages": USER, **fields})


def test_chat_defaults_follow_openai() -> None:
    req = chat()
    assert req.sampling.temperature == 1.0 and req.sampling.top_p == 1.0
    assert req.sampling.max_tokens is None and not req.stream and not req.include_usage


def test_chat_fields() -> None:
    req = parse_chat(
        {
            "model": "m",
            "messages": [
                {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": None},
            ],
            "max_tokens": 5,
            "max_completion_tokens": 7,
            "stop": "\n",
            "seed": -1,
            "stream": True,
            "stream_options": {"include_usage": True},
            "logprobs": True,
            "frequency_penalty": 0,  # unused fields are ignored
        }
    )
    assert req.messages[0] == {"role": "system", "content": "be brief"}
    assert req.messages[2] == {"role": "assistant", "content": ""}
    assert req.sampling.max_tokens == 7  # max_completion_tokens wins, as in OpenAI
    assert req.sampling.stop == ("\n",)
    assert req.sampling.seed == 2**64 - 1
    assert req.stream and req.include_usage and req.sampling.logprobs


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"n": 3}, "n"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": True}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"stop": ["a"] * 17}, "stop"),
        ({"stop": 3}, "stop"),
        ({"seed": 1.0}, "seed"),
        ({"stream": "yes"}, "stream"),
        ({"stream_options": []}, "stream_options"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": 3}]}, "messages[0]"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
        ({"messages": [{"role": "user", "content": "\ud800"}]}, "messages[0]"),
        ({"model": ""}, "model"),
        ({"top_logprobs": 2}, "top_logprobs"),  # needs logprobs=true
        ({"top_logprobs": 2, "logprobs": False}, "top_logprobs"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": -1, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 1.0, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": True, "logprobs": True}, "top_logprobs"),
    ],
)
def test_chat_refusals_name_the_parameter(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        chat(**fields)
    assert caught.value.param == param
    assert caught.value.body()["error"]["param"] == param


def test_completion_prompts() -> None:
    assert parse_completion({"model": "m", "prompt": "x"}).prompt == "x"
    assert parse_completion({"model": "m", "prompt": ["x"]}).prompt == "x"
    assert parse_completion({"model": "m", "prompt": [1, 2]}).prompt == (1, 2)
    assert parse_completion({"model": "m", "prompt": "x"}).sampling.max_tokens == 16
    for bad in (None, [], ["a", "b"], [[1], [2]], [1, "a"], 3):
        with pytest.raises(InvalidRequestError):
            parse_completion({"model": "m", "prompt": bad})
    for fields in ({"echo": True}, {"suffix": "x"}, {"best_of": 2}):
        with pytest.raises(InvalidRequestError):
            parse_completion({"model": "m", "prompt": "x", **fields})


def test_logprobs_within_openai_limits() -> None:
    """Chat: top_logprobs 0..20 with logprobs=true; completions: logprobs 0..5."""
    assert chat(logprobs=True, top_logprobs=20).sampling.top_logprobs == 20
    assert chat(top_logprobs=0).sampling == chat().sampling  # asks for nothing: accepted
    assert chat(logprobs=True).sampling.top_logprobs == 0
    for n, top in ((None, 0), (0, 0), (2, 2), (5, 5)):
        sampling = parse_completion({"model": "m", "prompt": "x", "logprobs": n}).sampling
        assert (sampling.logprobs, sampling.top_logprobs) == (n is not None, top)
        assert sampling.stream_kwargs()["top_logprobs"] == top
    for bad in (6, -1, 1.5, True, "2"):
        with pytest.raises(InvalidRequestError) as caught:
            parse_completion({"model": "m", "prompt": "x", "logprobs": bad})
        assert caught.value.param == "logprobs"


def test_json_bodies() -> None:
    assert parse_json(b'{"a": 1}') == {"a": 1}
    for body in (b"", b"{", b"[]", b'"x"', b"\xff", b"[" * 100_000):
        with pytest.raises(InvalidRequestError):
            parse_json(body)
    with pytest.raises(InvalidRequestError, match="bytes"):
        parse_json(b" " * (MAX_BODY + 1))


def test_loopback_and_model_ids() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert is_loopback("127.5.6.7") and is_loopback("[::1]")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.168.1.2")
    assert not is_loopback("no-such-host.invalid")
    assert model_id("smollm2-135m") == "smollm2-135m"
    assert model_id("/models/qwen-int4") == "qwen-int4"
    assert model_id("models/q.gguf") == "q.gguf"


def test_config_refuses_what_would_expose_or_confuse() -> None:
    from edge.errors import ConfigError

    with pytest.raises(ConfigError, match="--api-key"):
        ServeConfig(host="0.0.0.0")
    assert ServeConfig(host="0.0.0.0", api_key="k").api_key == "k"
    with pytest.raises(ConfigError):
        ServeConfig(api_key="  ")
    with pytest.raises(ConfigError):
        ServeConfig(models=("a/x", "b/x"))
    with pytest.raises(ConfigError):
        ServeConfig(port=70000)
    with pytest.raises(ConfigError):
        ServeConfig(models=())
    assert ServeConfig(cors_origins=("http://localhost:3000", "*")).cors_origins[1] == "*"
    for origin in ("http://localhost:3000/", "localhost:3000", "ftp://x", "", "https://a/b"):
        with pytest.raises(ConfigError, match="--cors-origin"):
            ServeConfig(cors_origins=(origin,))
