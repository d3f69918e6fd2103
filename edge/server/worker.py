"""The one thread that owns the engines: it loads the models, then runs queued requests one at a
time (a small device decodes one sequence at a time; two would halve each one's speed and
double the KV cache).

The queue is bounded: a request that finds it full is refused at once (429) rather than
waiting without limit. A request's tokens cross back to the event loop through an asyncio
queue; a request whose client went away is cancelled, and the thread stops its generation
before the next token.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edge.server.errors import LoadingError, NotFoundError, QueueFullError
from edge.server.metrics import Metrics

if TYPE_CHECKING:
    from edge.generate import GenerationResponse
    from edge.model import Model


@dataclass(frozen=True)
class Finished:
    """The last event of a request: what it cost, for usage and metrics."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    finish_reason: str
    first_token_s: float  # from the start of its turn to its first token (prefill included)
    decode_s: float  # from the first token to the last


@dataclass
class Job:
    """One request: the prompt's token ids, `Model.stream`'s keywords, and the way back."""

    model: str
    ids: list[int]
    kwargs: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def deliver(self, event: GenerationResponse | Finished | BaseException) -> None:
        """Hand an event to the request's coroutine (from the worker thread)."""
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the event loop is closed: the server is gone
            self.cancelled.set()

    async def __aiter__(self) -> AsyncIterator[GenerationResponse | Finished]:
        """The request's events, up to its `Finished`; an engine error is raised here."""
        while True:
            event = await self.events.get()
            if isinstance(event, BaseException):
                raise event
            yield event
            if isinstance(event, Finished):
                return


class EngineWorker:
    """Loads `loaders` (model id -> a function returning the loaded Model) on its thread, then
    serves `submit`ted jobs in order. `on_failure` is called (on the thread) if loading fails."""

    def __init__(
        self,
        loaders: Mapping[str, Callable[[], Model]],
        queue_size: int,
        metrics: Metrics,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.loaders = dict(loaders)
        self.queue_size = queue_size
        self.metrics = metrics
        self.on_failure = on_failure
        self.models: dict[str, Model] = {}
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._running: Job | None = None
        self._thread = threading.Thread(target=self._run, name="edge-engine", daemon=True)
        metrics.queue_depth.set_function(lambda: len(self._waiting))
        metrics.running.set_function(lambda: int(self._running is not None))

    @property
    def model_ids(self) -> list[str]:
        return list(self.loaders)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every request and end the thread; the models are closed."""
        with self._cond:
            self._stopping = True
            for job in self._waiting:
                job.cancelled.set()
            if self._running is not None:
                self._running.cancelled.set()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def model(self, name: str) -> Model:
        """The loaded model `name`: 503 while loading, 404 if this server has none by that name."""
        if name not in self.loaders:
            raise NotFoundError(
                f"the model {name!r} is not served here; this server has: "
                f"{', '.join(self.loaders)}",
                "model",
            )
        if not self.ready.is_set():
            if self.error is not None:
                raise LoadingError(f"the models failed to load: {self.error}")
            raise LoadingError("the model is loading; retry in a few seconds")
        return self.models[name]

    def submit(self, job: Job) -> None:
        """Queue `job`, or raise QueueFullError (429) if `queue_size` requests already wait."""
        with self._cond:
            if self._stopping:
                raise LoadingError("the server is shutting down")
            # one request runs while `queue_size` wait; counting both keeps that true in the
            # moment before the engine thread takes the first one off the queue
            admitted = len(self._waiting) + (self._running is not None)
            if admitted >= self.queue_size + 1:
                raise QueueFullError(
                    f"{len(self._waiting)} requests are waiting for the engine (the queue holds "
                    f"{self.queue_size}); retry later"
                )
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Stop `job`: dropped from the queue, or stopped before its next token."""
        job.cancelled.set()
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)

    def _run(self) -> None:
        try:
            for name, load in self.loaders.items():
                self.models[name] = load()
                self.metrics.model_loaded.labels(name).set(1)
        except BaseException as exc:
            self.error = exc
            if self.on_failure is not None:
                self.on_failure(exc)
            return
        self.ready.set()
        while True:
            with self._cond:
                while not self._waiting and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    break
                job = self._running = self._waiting.popleft()
            try:
                if not job.cancelled.is_set():
                    self._generate(job)
            except Exception as exc:  # an engine error (or a bug) fails its request only
                job.deliver(exc)
            finally:
                with self._cond:
                    self._running = None
        for model in self.models.values():
            model.engine.close()

    def _generate(self, job: Job) -> None:
        model = self.models[job.model]
        # what the model takes from its KV cache (live or a saved slot), for usage and metrics
        cached = model.cached_prefix(job.ids)
        started = time.perf_counter()
        first = last_time = started
        last = None
        responses = model.stream(job.ids, **job.kwargs)
        try:
            for last in responses:
                last_time = time.perf_counter()
                if last.generation_tokens == 1:
                    first = last_time
                job.deliver(last)
                if job.cancelled.is_set():
                    break
        finally:
            responses.close()  # the model's generation ends here, not at garbage collection
        if last is None:  # cancelled before the first token
            return
        done = Finished(
            prompt_tokens=len(job.ids),
            cached_tokens=cached,
            completion_tokens=last.generation_tokens,
            finish_reason=last.finish_reason or "cancelled",
            first_token_s=first - started,
            decode_s=last_time - first,
        )
        self.metrics.record(done, last)
        job.deliver(done)
