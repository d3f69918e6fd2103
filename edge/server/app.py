"""The HTTP routes: OpenAI's chat and completions endpoints, models, health, metrics, the page.

A request is read and checked here (400, 404, 503), its prompt tokenized and measured against
the context window (400 with the numbers), then queued for the engine thread (429 when full).
Streamed replies are server-sent events; a client that goes away cancels its request, which
the engine thread stops before its next token.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from edge.chat_template import ChatTemplateError
from edge.errors import EdgeError, InvalidSamplingError, InvalidTokenError
from edge.generate import GenerationConfig
from edge.sampling import SamplingConfig
from edge.server import responses
from edge.server.auth import BearerAuth
from edge.server.errors import (
    APIError,
    ContextLengthError,
    GenerationFailedError,
    InvalidRequestError,
)
from edge.server.metrics import CONTENT_TYPE, Metrics
from edge.server.page import PAGE
from edge.server.schemas import (
    ChatRequest,
    CompletionRequest,
    parse_chat,
    parse_completion,
    parse_json,
)
from edge.server.worker import EngineWorker, Finished, Job

if TYPE_CHECKING:
    from edge.model import Model

RETRY_AFTER = {429: "1", 503: "5"}
ENDPOINTS = frozenset(
    {"/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions"}
)


def create_app(
    worker: EngineWorker,
    metrics: Metrics,
    api_key: str | None = None,
    cors_origins: tuple[str, ...] = (),
) -> ASGIApp:
    """The ASGI application; its lifespan starts the engine thread and stops it.

    With `cors_origins`, pages from those origins may call the API from a browser: CORS sits
    outside the key check, since a browser's preflight (OPTIONS) never carries the key, and
    it allows the request headers asked for, Authorization among them."""
    routes = Routes(worker, metrics)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await asyncio.get_running_loop().run_in_executor(None, worker.stop)

    app = Starlette(
        routes=[
            Route("/", routes.page),
            Route("/health", routes.health),
            Route("/metrics", routes.metrics_text),
            Route("/v1/models", routes.models),
            Route("/v1/models/{model:path}", routes.model),
            Route("/v1/chat/completions", routes.chat, methods=["POST"]),
            Route("/v1/completions", routes.completions, methods=["POST"]),
        ],
        exception_handlers={APIError: api_error, HTTPException: http_error, Exception: bug},
        lifespan=lifespan,
    )
    inner: ASGIApp = BearerAuth(app, api_key) if api_key else app
    if cors_origins:
        inner = CORSMiddleware(
            inner,
            allow_origins=cors_origins,
            allow_methods=("GET", "POST"),
            allow_headers=("*",),  # Authorization, Content-Type and client libraries' own
        )
    return CountRequests(inner, metrics)


class Routes:
    def __init__(self, worker: EngineWorker, metrics: Metrics) -> None:
        self.worker = worker
        self.metrics = metrics
        self.created = int(time.time())

    async def page(self, request: Request) -> Response:
        return HTMLResponse(PAGE)

    async def health(self, request: Request) -> Response:
        if not self.worker.ready.is_set():
            self.worker.model(self.worker.model_ids[0])  # raises 503, saying why
        return JSONResponse({"status": "ok", "models": self.worker.model_ids})

    async def metrics_text(self, request: Request) -> Response:
        return Response(self.metrics.render(), media_type=CONTENT_TYPE)

    def _model_entry(self, name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": self.created, "owned_by": "edge"}

    async def models(self, request: Request) -> Response:
        data = [self._model_entry(name) for name in self.worker.model_ids]
        return JSONResponse({"object": "list", "data": data})

    async def model(self, request: Request) -> Response:
        name = request.path_params["model"]
        if name not in self.worker.model_ids:
            self.worker.model(name)  # raises 404 naming what is served
        return JSONResponse(self._model_entry(name))

    async def chat(self, request: Request) -> Response:
        req = parse_chat(parse_json(await request.body()))
        model = self.worker.model(req.model)
        if not model.tokenizer.has_chat_template:
            raise InvalidRequestError(
                f"the model {req.model!r} has no chat template; use /v1/completions", "messages"
            )
        try:
            text = model.tokenizer.apply_chat_template(list(req.messages))
        except ChatTemplateError as exc:
            raise InvalidRequestError(f"the chat template failed: {exc}", "messages") from exc
        ids = model.tokenizer.encode(text, add_special_tokens=False)
        return await self._generate(request, "chat.completion", req, model, ids, "messages")

    async def completions(self, request: Request) -> Response:
        req = parse_completion(parse_json(await request.body()))
        model = self.worker.model(req.model)
        if isinstance(req.prompt, str):
            ids = model.tokenizer.encode(req.prompt)
        else:
            ids = list(req.prompt)
            vocab = model.spec.vocab_size
            if any(not 0 <= t < vocab for t in ids):
                raise InvalidRequestError(
                    f"the prompt holds token ids outside the vocabulary [0, {vocab})", "prompt"
                )
        return await self._generate(request, "text_completion", req, model, ids, "prompt")

    async def _generate(
        self,
        request: Request,
        kind: str,
        req: ChatRequest | CompletionRequest,
        model: Model,
        ids: list[int],
        prompt_param: str,
    ) -> Response:
        """Queue the prompt `ids` for `model`; the streamed or whole response."""
        sampling = req.sampling
        context = model.engine.max_context
        if not ids:
            raise InvalidRequestError("the prompt is empty", prompt_param)
        if len(ids) >= context:
            raise ContextLengthError(
                f"this model's context window is {context} tokens; the prompt has {len(ids)} "
                f"tokens, which leaves no room for a reply (shorten it, or start edge serve "
                f"with a larger --ctx)",
                prompt_param,
            )
        kwargs = {
            **sampling.stream_kwargs(),
            "max_tokens": min(sampling.max_tokens or context, context - len(ids)),
        }
        try:  # checked now, not on the engine thread after the wait
            GenerationConfig(
                max_tokens=kwargs["max_tokens"],
                stop=sampling.stop,
                sampling=SamplingConfig(
                    temperature=sampling.temperature, top_p=sampling.top_p, seed=sampling.seed
                ),
                top_logprobs=sampling.top_logprobs,
            )
        except InvalidSamplingError as exc:
            raise InvalidRequestError(str(exc)) from exc
        job = Job(req.model, ids, kwargs, asyncio.get_running_loop())
        self.worker.submit(job)
        reply = responses.Reply.new(kind, req.model)

        def decode(tokens: list[int]) -> str:
            return model.tokenizer.decode(tokens, skip_special_tokens=False)

        if req.stream:
            events = stream_events(reply, job, sampling.logprobs, req.include_usage, decode)
            return EventStream(events, lambda: self.worker.cancel(job))
        collecting = asyncio.ensure_future(collect(job))
        hangup = asyncio.ensure_future(disconnected(request.receive))
        try:
            await asyncio.wait({collecting, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hangup.cancel()
            if not collecting.done():  # the client went away: free the engine now
                self.worker.cancel(job)
                collecting.cancel()
        if not collecting.done() or collecting.cancelled():
            return Response(status_code=499)
        text, done, logprobs = collecting.result()
        body = responses.whole(reply, text, done, logprobs if sampling.logprobs else None, decode)
        return JSONResponse(body)


async def collect(job: Job) -> tuple[str, Finished, list[Any]]:
    """A whole generation: its text, its end, and every token's response (for logprobs)."""
    parts, tokens = [], []
    try:
        async for event in job:
            if isinstance(event, Finished):
                return "".join(parts), event, tokens
            parts.append(event.text)
            tokens.append(event)
    except (InvalidSamplingError, InvalidTokenError) as exc:
        raise InvalidRequestError(str(exc)) from exc
    except EdgeError as exc:
        raise GenerationFailedError(f"generation failed: {exc}") from exc
    raise GenerationFailedError("the generation ended without finishing")


async def disconnected(receive: Receive) -> None:
    """Returns when the client closes the connection (the body was already read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def stream_events(
    reply: responses.Reply,
    job: Job,
    logprobs: bool,
    include_usage: bool,
    decode: Callable[[list[int]], str],
) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed reply, ending with `data: [DONE]`."""
    # include_usage: usage is null on every chunk and an extra last one carries it (OpenAI);
    # without it, the finishing chunk carries the usage (as llama.cpp's server does)
    extra = {"usage": None} if include_usage else None
    if reply.chat:
        yield responses.chunk(reply, "", role=True, extra=extra)
    offset = 0
    try:
        async for event in job:
            if isinstance(event, Finished):
                yield responses.chunk(
                    reply,
                    None,
                    finish_reason=event.finish_reason,
                    extra=extra or {"usage": responses.usage(event)},
                )
                if include_usage:
                    yield responses.usage_chunk(reply, event)
                break
            if event.text or logprobs:
                entry = None
                if logprobs and reply.chat:
                    entry = responses.token_logprob(event, decode)
                elif logprobs:
                    entry = responses.completion_logprobs([event], decode, offset)
                yield responses.chunk(reply, event.text, logprob=entry, extra=extra)
                offset += len(event.text)
    except Exception as exc:  # the status line is sent: report the error as an event
        error = exc if isinstance(exc, APIError) else GenerationFailedError(f"{exc!s:.300}")
        yield responses.error_event(error.body())
    yield responses.DONE


class EventStream(StreamingResponse):
    """A `text/event-stream` response that calls `on_close` however it ends (finished, client
    gone, server stopping), so the engine thread never generates for nobody."""

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None]) -> None:
        super().__init__(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            await self.body_iterator.aclose()  # type: ignore[attr-defined]


def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    headers = {"Retry-After": RETRY_AFTER[exc.status]} if exc.status in RETRY_AFTER else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (no such path, wrong method) in OpenAI's shape."""
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else None
    error = APIError(f"{request.method} {request.url.path}: {exc.detail}", code=code)
    return JSONResponse(error.body(), status_code=exc.status_code, headers=exc.headers)


def bug(request: Request, exc: Exception) -> Response:
    error = GenerationFailedError(f"internal error: {type(exc).__name__}: {exc!s:.300}")
    error.code = "internal_error"
    return JSONResponse(error.body(), status_code=500)


class CountRequests:
    """Counts answered requests by endpoint and status, for /metrics (pure ASGI, so a streamed
    response is counted when its status line goes out)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in ENDPOINTS else "other"

        async def counting_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                self.metrics.requests.labels(path, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)
