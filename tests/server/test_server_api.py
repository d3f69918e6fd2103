"""`edge serve` through the official OpenAI client: chat and completions, streamed and not,
usage, stop strings, seeds, logprobs, the prefix cache, and each error status."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")

from edge.engine import EngineConfig  # noqa: E402
from edge.model import Model  # noqa: E402
from edge.package import open_package  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello, world! How are you today?"}]
PROMPT = "The quick brown fox"


@pytest.fixture(scope="module")
def sdk(tiny_package: Path) -> Model:
    """The same package through the SDK directly: what the server must reproduce."""
    return Model(open_package(tiny_package), EngineConfig(threads=1, max_context=256))


@pytest.fixture(scope="module")
def api(shared_server: Any, make_client: Callable[..., Any]) -> Any:
    return make_client(shared_server)


def raw(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any] | str, Any]:
    """(status, parsed JSON or text, headers) of one request, error statuses included."""
    request = urllib.request.Request(url, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, data, head = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, data, head = exc.code, exc.read(), exc.headers
    text = data.decode("utf-8")
    try:
        return status, json.loads(text), head
    except ValueError:
        return status, text, head


def assert_openai_error(body: Any, code: str | None = None) -> dict[str, Any]:
    assert isinstance(body, dict) and set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def test_chat_equals_the_sdk_with_usage(api: Any, tiny_id: str, sdk: Model) -> None:
    """A greedy chat reply is the SDK's reply, token for token, with its usage counted."""
    reply = api.chat.completions.create(
        model=tiny_id, messages=MESSAGES, max_tokens=24, temperature=0
    )
    expected = sdk.chat(MESSAGES, max_tokens=24)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected
    assert choice.finish_reason in ("stop", "length")
    prompt = sdk.tokenizer.encode(
        sdk.tokenizer.apply_chat_template(MESSAGES), add_special_tokens=False
    )
    assert reply.usage.prompt_tokens == len(prompt)
    assert 1 <= reply.usage.completion_tokens <= 24
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.object == "chat.completion" and reply.model == tiny_id


def test_streamed_chat_equals_whole_and_reports_usage(api: Any, tiny_id: str) -> None:
    whole = api.chat.completions.create(
        model=tiny_id, messages=MESSAGES, max_tokens=24, temperature=0
    )
    chunks = list(
        api.chat.completions.create(
            model=tiny_id,
            messages=MESSAGES,
            max_tokens=24,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert len({c.id for c in chunks}) == 1
    # without include_usage, the finishing chunk carries the usage
    plain = list(
        api.chat.completions.create(
            model=tiny_id, messages=MESSAGES, max_tokens=24, temperature=0, stream=True
        )
    )
    assert plain[-1].choices[0].finish_reason == whole.choices[0].finish_reason
    assert plain[-1].usage.total_tokens == whole.usage.total_tokens


def test_completions_whole_and_streamed_equal_the_sdk(api: Any, tiny_id: str, sdk: Model) -> None:
    expected = sdk.generate(PROMPT, max_tokens=20)
    whole = api.completions.create(model=tiny_id, prompt=PROMPT, max_tokens=20, temperature=0)
    assert whole.choices[0].text == expected
    assert whole.usage.prompt_tokens == len(sdk.tokenizer.encode(PROMPT))
    assert whole.usage.completion_tokens == 20 or whole.choices[0].finish_reason == "stop"
    streamed = api.completions.create(
        model=tiny_id, prompt=PROMPT, max_tokens=20, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == expected


def test_completions_default_to_16_tokens(api: Any, tiny_id: str) -> None:
    """OpenAI's default max_tokens for completions."""
    reply = api.completions.create(model=tiny_id, prompt=PROMPT, temperature=0)
    assert reply.usage.completion_tokens == 16 or reply.choices[0].finish_reason == "stop"


def test_stop_strings_end_the_text(api: Any, tiny_id: str) -> None:
    """A stop string (alone or in a list) ends the reply before it, finish_reason "stop"."""
    free = api.completions.create(model=tiny_id, prompt=PROMPT, max_tokens=40, temperature=0)
    text = free.choices[0].text
    assert len(text) > 8, text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    if not stop.strip():
        stop = text[4:7]
    for value in (stop, ["never-generated-xyz", stop]):
        reply = api.completions.create(
            model=tiny_id, prompt=PROMPT, max_tokens=40, temperature=0, stop=value
        )
        assert reply.choices[0].finish_reason == "stop"
        assert reply.choices[0].text == text[: text.index(stop)]
        streamed = api.completions.create(
            model=tiny_id, prompt=PROMPT, max_tokens=40, temperature=0, stop=value, stream=True
        )
        assert "".join(c.choices[0].text for c in streamed) == text[: text.index(stop)]


def test_same_seed_same_text(api: Any, tiny_id: str) -> None:
    def sample(seed: int) -> str:
        reply = api.chat.completions.create(
            model=tiny_id, messages=MESSAGES, max_tokens=32, temperature=1.0, seed=seed
        )
        return reply.choices[0].message.content

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10))


def test_logprobs_per_token(api: Any, tiny_id: str) -> None:
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


def test_next_turn_reuses_the_cached_prefix(api: Any, tiny_id: str) -> None:
    """The second turn of a conversation prefills only what is new: usage says how much."""
    first = api.chat.completions.create(
        model=tiny_id, messages=MESSAGES, max_tokens=8, temperature=0
    )
    turn = [
        *MESSAGES,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Tell me more."},
    ]
    second = api.chat.completions.create(model=tiny_id, messages=turn, max_tokens=8, temperature=0)
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 1


def test_models_health_metrics_and_page(shared_server: Any, api: Any, tiny_id: str) -> None:
    assert [m.id for m in api.models.list().data] == [tiny_id]
    assert api.models.retrieve(tiny_id).id == tiny_id
    status, body, _ = raw(f"{shared_server.url}/health")
    assert status == 200 and body["status"] == "ok"
    status, text, _ = raw(f"{shared_server.url}/metrics")
    assert status == 200
    for name in (
        "edge_requests_total",
        "edge_queue_depth",
        "edge_decode_tokens_per_second",
        "edge_time_to_first_token_seconds",
        "edge_decode_seconds",
        "edge_speculation_acceptance",
    ):
        assert name in text
    status, page, head = raw(f"{shared_server.url}/")
    assert status == 200 and head["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in page
    assert "http://" not in page and "https://" not in page  # nothing from outside


def test_400_invalid_json_and_parameters(shared_server: Any, api: Any, tiny_id: str) -> None:
    url = f"{shared_server.url}/v1/chat/completions"
    json_headers = {"Content-Type": "application/json"}
    status, body, _ = raw(url, b'{"model": "x", "messages": [', json_headers)
    assert status == 400 and "JSON" in assert_openai_error(body)["message"]
    status, body, _ = raw(url, b"[1, 2]", json_headers)
    assert status == 400
    bad: list[tuple[dict[str, Any], str]] = [
        ({"n": 2}, "n"),
        ({"temperature": 5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": [""]}, "stop"),
        ({"seed": "x"}, "seed"),
        ({"top_logprobs": 3, "logprobs": True}, "top_logprobs"),
    ]
    for extra, param in bad:
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(model=tiny_id, messages=MESSAGES, **extra)
        assert caught.value.status_code == 400
        assert caught.value.body["param"] == param, caught.value.body
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model=tiny_id, messages=[])
    with pytest.raises(openai.BadRequestError):
        api.chat.completions.create(model=tiny_id, messages=[{"role": "wizard", "content": "x"}])


def test_400_prompt_over_the_context_says_the_numbers(api: Any, tiny_id: str, sdk: Model) -> None:
    prompt = "The quick brown fox jumps over the lazy dog. " * 40
    n = len(sdk.tokenizer.encode(prompt))
    assert n >= 256
    with pytest.raises(openai.BadRequestError) as caught:
        api.completions.create(model=tiny_id, prompt=prompt, max_tokens=4)
    assert caught.value.body["code"] == "context_length_exceeded"
    assert "256" in caught.value.message and str(n) in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        api.chat.completions.create(
            model=tiny_id, messages=[{"role": "user", "content": prompt}], stream=True
        )
    assert caught.value.body["code"] == "context_length_exceeded"


def test_404_unknown_model_and_path(shared_server: Any, api: Any, tiny_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        api.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert caught.value.body["code"] == "model_not_found" and tiny_id in caught.value.message
    with pytest.raises(openai.NotFoundError):
        api.completions.create(model="no-such-model", prompt="x", stream=True)
    status, body, _ = raw(f"{shared_server.url}/v2/nothing")
    assert status == 404
    assert_openai_error(body)


def test_401_without_the_key(
    start_server: Callable[..., Any], make_client: Callable[..., Any], tiny_id: str
) -> None:
    """With --api-key, the API and /metrics need 'Authorization: Bearer KEY'; the page and
    /health do not."""
    key = "s3cret-key-for-tests"
    server = start_server(api_key=key)
    server.wait_ready(60)
    for wrong in ("wrong-key", key[:-1], key + "x"):
        with pytest.raises(openai.AuthenticationError) as caught:
            make_client(server, api_key=wrong).models.list()
        assert caught.value.status_code == 401
        assert caught.value.body["code"] == "invalid_api_key"
    status, body, head = raw(f"{server.url}/v1/models")
    assert status == 401 and head["www-authenticate"].startswith("Bearer")
    assert_openai_error(body, "invalid_api_key")
    assert raw(f"{server.url}/metrics")[0] == 401
    assert raw(f"{server.url}/metrics", headers={"Authorization": f"Bearer {key}"})[0] == 200
    assert raw(f"{server.url}/health")[0] == 200
    assert raw(f"{server.url}/")[0] == 200
    reply = make_client(server, api_key=key).chat.completions.create(
        model=tiny_id, messages=MESSAGES, max_tokens=4
    )
    assert reply.usage.completion_tokens >= 1


def test_429_when_the_queue_is_full(
    start_server: Callable[..., Any], make_client: Callable[..., Any], tiny_id: str
) -> None:
    """With no room to wait (queue 0), a request arriving while one generates gets 429 with
    Retry-After; once the engine is free, requests are served again."""
    server = start_server(queue_size=0)
    server.wait_ready(60)
    api = make_client(server)
    stream = api.completions.create(
        model=tiny_id,
        prompt=PROMPT,
        max_tokens=200,
        temperature=0,
        stream=True,
        extra_body={"ignore_eos": True},  # long enough to still run when the next one comes
    )
    next(iter(stream))
    with pytest.raises(openai.RateLimitError) as caught:
        api.completions.create(model=tiny_id, prompt=PROMPT, max_tokens=4)
    assert caught.value.status_code == 429
    assert caught.value.body["code"] == "queue_full"
    assert caught.value.response.headers["retry-after"] == "1"
    stream.close()
    deadline = time.monotonic() + 10
    while True:
        try:
            api.completions.create(model=tiny_id, prompt=PROMPT, max_tokens=4)
            break
        except openai.RateLimitError:
            assert time.monotonic() < deadline, "the engine was not freed"
            time.sleep(0.05)


class Gate:
    """A loader that loads only once `open()` is called: meanwhile the server is up and
    loading, which is when it must answer 503."""

    def __init__(self, load: Callable[[], Model]) -> None:
        self.load = load
        self.event = threading.Event()

    def __call__(self) -> Model:
        if not self.event.wait(60):
            raise TimeoutError("the test never opened the gate")
        return self.load()


def test_503_while_loading(
    start_server: Callable[..., Any],
    make_client: Callable[..., Any],
    tiny_package: Path,
    tiny_id: str,
) -> None:
    gate = Gate(lambda: Model(open_package(tiny_package), EngineConfig(threads=1, max_context=256)))
    server = start_server(loaders={tiny_id: gate})
    api = make_client(server)
    with pytest.raises(openai.InternalServerError) as caught:
        api.chat.completions.create(model=tiny_id, messages=MESSAGES)
    assert caught.value.status_code == 503
    assert caught.value.body["code"] == "model_loading"
    assert caught.value.response.headers["retry-after"] == "5"
    status, body, _ = raw(f"{server.url}/health")
    assert status == 503 and assert_openai_error(body, "model_loading")
    gate.event.set()
    server.wait_ready(60)
    assert api.chat.completions.create(model=tiny_id, messages=MESSAGES, max_tokens=2).choices


def test_a_failed_load_answers_503_with_the_reason(
    start_server: Callable[..., Any], make_client: Callable[..., Any], tiny_id: str
) -> None:
    def broken() -> Model:
        raise FileNotFoundError("no package here")

    server = start_server(loaders={tiny_id: broken})
    with pytest.raises(FileNotFoundError):
        server.wait_ready(60)
    assert server.wait_stopped(10), "a server whose model failed to load must stop"


def test_speculative_serving_keeps_the_text_and_reports_acceptance(
    start_server: Callable[..., Any], make_client: Callable[..., Any], api: Any, tiny_id: str
) -> None:
    """`--draft lookup` through the server: the same greedy text, and /metrics counts drafts."""
    prompt = "the shells she sells are surely sea shells; the shells she sells are"
    plain = api.completions.create(model=tiny_id, prompt=prompt, max_tokens=40, temperature=0)
    server = start_server(load={"max_context": 256, "threads": 1, "draft": "lookup"})
    server.wait_ready(60)
    drafted = make_client(server).completions.create(
        model=tiny_id, prompt=prompt, max_tokens=40, temperature=0
    )
    assert drafted.choices[0].text == plain.choices[0].text
    status, text, _ = raw(f"{server.url}/metrics")
    assert status == 200
    line = next(ln for ln in text.splitlines() if ln.startswith("edge_speculation_drafted"))
    assert float(line.split()[1]) >= 0
