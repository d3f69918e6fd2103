"""`edge serve` through the official OpenAI client: chat and completions, streamed and not,
usage, stop strings, the prefix cache, CORS, and each error status (sampling and logprobs:
test_server_sampling.py)."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")
try:  # the openai client's own HTTP library: httpx, or its successor httpx2
    import httpx
except ImportError:
    httpx = pytest.importorskip("httpx2")

from edge.engine import EngineConfig  # noqa: E402
from edge.model import Model  # noqa: E402
from edge.package import open_package  # noqa: E402

MESSAGES = [{"role": "user", "content": "Hello, world! How are you today?"}]
PROMPT = "The quick brown fox"


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


def test_cors_only_when_configured(
    shared_server: Any, start_server: Callable[..., Any], tiny_id: str
) -> None:
    """A browser's preflight gets Access-Control-Allow-Origin only from a server started with
    --cors-origin, and only for that origin; with a key, Authorization is allowed without it."""
    origin = "http://localhost:3000"
    preflight = {
        "Origin": origin,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    url = "/v1/chat/completions"
    plain = httpx.options(shared_server.url + url, headers=preflight)
    assert "access-control-allow-origin" not in plain.headers
    key = "cors-key-0123"
    server = start_server(api_key=key, cors_origins=(origin, "https://app.example"))
    allowed = httpx.options(server.url + url, headers=preflight)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == origin
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "POST" in allowed.headers["access-control-allow-methods"]
    other = httpx.options(server.url + url, headers={**preflight, "Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    # the real request still needs the key, and its answer (401 or not) carries the header
    denied = httpx.get(server.url + "/v1/models", headers={"Origin": origin})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == origin
    ok = httpx.get(
        server.url + "/v1/models", headers={"Origin": origin, "Authorization": f"Bearer {key}"}
    )
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == origin
    assert [m["id"] for m in ok.json()["data"]] == [tiny_id]


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


def metric(server: Any, sample: str) -> float:
    """One sample of the server's /metrics by its exact name, labels included (a counter's
    ends in _total)."""
    status, text, _ = raw(f"{server.url}/metrics")
    assert status == 200
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match, text
    return float(match.group(1))


def cached_tokens_metric(server: Any) -> float:
    """The server's count of prompt tokens taken from the KV cache so far."""
    return metric(server, "edge_prompt_tokens_cached_total")


def test_interleaved_chats_each_keep_their_prefix(
    shared_server: Any, api: Any, tiny_id: str, sdk: Model
) -> None:
    """With the server's KV slots, A's next turn after B's reuses A's whole first turn (the
    cached-token counter grows by it), and every reply is the one-conversation reply."""
    a = [{"role": "user", "content": "Rotary embeddings rotate queries and keys by an angle."}]
    b = [{"role": "user", "content": "The quick brown fox jumps over the lazy dog."}]
    greedy = {"max_tokens": 24, "temperature": 0, "extra_body": {"ignore_eos": True}}
    first = api.chat.completions.create(model=tiny_id, messages=a, **greedy)
    other = api.chat.completions.create(model=tiny_id, messages=b, **greedy)
    turn = [
        *a,
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "Tell me more."},
    ]
    before = cached_tokens_metric(shared_server)
    again = api.chat.completions.create(model=tiny_id, messages=turn, **greedy)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert cached >= first.usage.prompt_tokens - 1
    assert cached_tokens_metric(shared_server) - before == cached
    for messages, reply in ((a, first), (b, other), (turn, again)):
        expected = sdk.chat(messages, max_tokens=24, ignore_eos=True)
        assert reply.choices[0].message.content == expected


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
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": -1, "logprobs": True}, "top_logprobs"),
        ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs=true
    ]
    for extra, param in bad:
        with pytest.raises(openai.BadRequestError) as caught:
            api.chat.completions.create(model=tiny_id, messages=MESSAGES, **extra)
        assert caught.value.status_code == 400
        assert caught.value.body["param"] == param, caught.value.body
    for logprobs in (6, -1):
        with pytest.raises(openai.BadRequestError) as caught:
            api.completions.create(model=tiny_id, prompt=PROMPT, logprobs=logprobs)
        assert caught.value.body["param"] == "logprobs", caught.value.body
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


TOKEN_S = 0.025  # the slowed model's time per token: 200 tokens take 5 s


def slowed(load: Callable[[], Model]) -> Callable[[], Model]:
    """A loader whose model yields each token after TOKEN_S, as a small device decodes: a
    request then still generates when its client gives up."""

    def slow_load() -> Model:
        model = load()
        stream = model.stream

        def slow_stream(*args: Any, **kwargs: Any) -> Iterator[Any]:
            responses = stream(*args, **kwargs)
            try:
                for response in responses:
                    time.sleep(TOKEN_S)
                    yield response
            finally:
                responses.close()

        model.stream = slow_stream  # type: ignore[method-assign]
        return model

    return slow_load


def test_a_client_gone_before_its_whole_reply_frees_the_engine(
    start_server: Callable[..., Any],
    make_client: Callable[..., Any],
    tiny_package: Path,
    tiny_id: str,
) -> None:
    """A non-streamed request whose client hangs up (here its timeout) is cancelled and
    answered 499: the engine stops it before its next token, so the next request is served
    at once rather than after the 200 tokens the first one asked for."""
    load = slowed(
        lambda: Model(open_package(tiny_package), EngineConfig(threads=1, max_context=256))
    )
    server = start_server(loaders={tiny_id: load})
    server.wait_ready(60)
    body = {"model": tiny_id, "prompt": PROMPT, "max_tokens": 200, "ignore_eos": True}
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{server.url}/v1/completions", json=body, timeout=0.3)
    started = time.monotonic()
    reply = make_client(server).completions.create(
        model=tiny_id, prompt=PROMPT, max_tokens=4, extra_body={"ignore_eos": True}
    )
    waited = time.monotonic() - started
    assert reply.usage.completion_tokens == 4
    assert waited < 100 * TOKEN_S, f"the next request waited {waited:.1f} s"
    # the first request stopped early (both are counted once the second has its reply)
    cancelled_tokens = metric(server, "edge_generated_tokens_total") - 4
    assert 1 <= cancelled_tokens < 100, cancelled_tokens
    assert metric(server, 'edge_requests_total{endpoint="/v1/completions",status="499"}') == 1
    assert metric(server, "edge_requests_running") == 0
    assert metric(server, "edge_queue_depth") == 0


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
    """`--draft lookup --draft-tokens 4` through the server: the same greedy text, and /metrics
    counts the drafts. (A fixed k: adaptive drafting may decline every draft where it measures
    no gain, as on this 1 ms-a-token model, and what it measures depends on the load.)"""
    from edge.speculative import SpeculativeConfig

    prompt = "the shells she sells are surely sea shells; the shells she sells are"
    plain = api.completions.create(model=tiny_id, prompt=prompt, max_tokens=40, temperature=0)
    lookup = {"draft": "lookup", "speculative": SpeculativeConfig(draft_tokens=4, adaptive=False)}
    server = start_server(load={"max_context": 256, "threads": 1, **lookup})
    server.wait_ready(60)
    drafted = make_client(server).completions.create(
        model=tiny_id, prompt=prompt, max_tokens=40, temperature=0
    )
    assert drafted.choices[0].text == plain.choices[0].text
    # logprobs and their alternatives come from the verification pass, as plain decoding's
    both = [
        client.completions.create(
            model=tiny_id, prompt=prompt, max_tokens=12, temperature=0, logprobs=3
        ).choices[0]
        for client in (api, make_client(server))
    ]
    assert both[1].text == both[0].text
    assert both[1].logprobs.token_logprobs == pytest.approx(
        both[0].logprobs.token_logprobs, abs=1e-4
    )
    for mine, theirs in zip(both[1].logprobs.top_logprobs, both[0].logprobs.top_logprobs):
        assert next(iter(mine)) == next(iter(theirs))
        assert list(mine.values()) == pytest.approx(list(theirs.values()), abs=1e-4)
    # the prompt repeats itself: the lookup drafter proposed tokens, and no more were
    # accepted than proposed
    drafted_tokens = metric(server, "edge_speculation_drafted_tokens_total")
    accepted_tokens = metric(server, "edge_speculation_accepted_tokens_total")
    assert drafted_tokens > 0
    assert 0 <= accepted_tokens <= drafted_tokens
