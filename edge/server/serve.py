"""Running the server: `serve` blocks (the CLI's), `BackgroundServer` runs it on a thread (tests,
benchmarks, a program embedding edge). Both bind the socket before anything loads, so a port in
use or a bad host is an error at once, and start listening before the models load: clients get
503 until they are ready."""

from __future__ import annotations

import socket
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn

from edge.errors import ConfigError
from edge.server.app import create_app
from edge.server.config import ServeConfig, model_id
from edge.server.metrics import Metrics
from edge.server.worker import EngineWorker

if TYPE_CHECKING:
    from edge.model import Model

GRACEFUL_S = 3  # a stopping server waits this long for replies in flight


def serve(config: ServeConfig, *, quiet: bool = False) -> None:
    """Serve `config.models` until interrupted (Ctrl-C). Raises the load error if a model
    cannot be loaded (the server then stops)."""
    server = BackgroundServer(config, on_ready=None if quiet else _announce)
    if not quiet:
        print(
            f"edge serve: listening on {server.url}, loading {', '.join(config.models)} ...",
            file=sys.stderr,
        )
    server.server.run(sockets=[server.socket])
    if server.worker.error is not None:
        raise server.worker.error


def _announce(server: BackgroundServer) -> None:
    names = ", ".join(server.worker.model_ids)
    print(
        f"edge serve: ready: {names} at {server.url}/v1 (chat page: {server.url}/)",
        file=sys.stderr,
    )


class BackgroundServer:
    """A server on a bound socket: `start()` runs it on a thread, `stop()` ends it.

    >>> with BackgroundServer(ServeConfig(models=("smollm2-135m",), port=0)) as s:  # doctest: +SKIP
    ...     s.wait_ready()
    ...     print(s.url)
    """

    def __init__(
        self,
        config: ServeConfig,
        loaders: dict[str, Callable[[], Model]] | None = None,
        on_ready: Callable[[BackgroundServer], None] | None = None,
    ) -> None:
        self.config = config
        self.socket = bind(config.host, config.port)
        host, port = self.socket.getsockname()[:2]
        self.port = port
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        self.metrics = Metrics()
        self.worker = EngineWorker(
            loaders or default_loaders(config), config.queue_size, self.metrics, self._failed
        )
        app = create_app(self.worker, self.metrics, config.api_key, config.cors_origins)
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=GRACEFUL_S,
                lifespan="on",
            )
        )
        self._thread: threading.Thread | None = None
        if on_ready is not None:
            threading.Thread(
                target=self._when_ready, args=(on_ready,), name="edge-ready", daemon=True
            ).start()

    def _failed(self, error: BaseException) -> None:
        """A model failed to load: stop serving (`serve` and `wait_ready` raise the error)."""
        self.server.should_exit = True

    def _when_ready(self, callback: Callable[[BackgroundServer], None]) -> None:
        self.worker.ready.wait()
        callback(self)

    def start(self, timeout: float = 30.0) -> BackgroundServer:
        """Run on a daemon thread; returns once it accepts connections (models may still load)."""
        self._thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.socket]}, name="edge-serve"
        )
        self._thread.daemon = True
        self._thread.start()
        waited = threading.Event()
        while not self.server.started and self._thread.is_alive() and not waited.wait(0.01):
            timeout -= 0.01
            if timeout <= 0:
                raise TimeoutError("the server did not start")
        return self

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until every model is loaded; raise its error if loading failed."""
        while not self.worker.ready.wait(0.05):
            if self.worker.error is not None:
                raise self.worker.error
            if timeout is not None:
                timeout -= 0.05
                if timeout <= 0:
                    raise TimeoutError("the models did not load in time")

    def wait_stopped(self, timeout: float | None = None) -> bool:
        """Wait for the server thread to end (after `stop()` or a failed load); whether it did."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def stop(self) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(GRACEFUL_S + 10)
        self.socket.close()

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def default_loaders(config: ServeConfig) -> dict[str, Callable[[], Model]]:
    """model id -> a function loading it with `edge.load` and the configured options."""
    import edge

    options = {**config.load, "kv_slots": config.kv_slots}

    def loader(model: str) -> Callable[[], Model]:
        return lambda: edge.load(model, **options)

    return {model_id(m): loader(m) for m in config.models}


def bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on host:port (0 picks a free port)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}") from exc
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another --port)"
        ) from exc
    sock.set_inheritable(True)
    return sock
