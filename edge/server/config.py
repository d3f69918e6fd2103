"""What `edge serve` is asked to do: where to listen, who may call, which models to load."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.errors import ConfigError

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_QUEUE = 8
DEFAULT_MODEL = "smollm2-135m"
# Saved KV prefixes per model: a household's few conversations each keep theirs (edge/kv_slots.py).
DEFAULT_KV_SLOTS = 4


@dataclass(frozen=True)
class ServeConfig:
    """The server's settings; checked on construction, before any model is loaded.

    `models` are what `edge.load` accepts (registered names, GGUF files, folders, packages);
    `load` holds `edge.load`'s other keywords (max_context, threads, memory_budget, plan, draft,
    ...), applied to every model. `queue_size` counts the requests that may wait while one
    generates; one more gets 429. `cors_origins` are the web origins (scheme://host[:port], or
    "*" for any) whose pages may call the API from a browser; none by default. `kv_slots`
    earlier KV cache prefixes are kept per model, so conversations taking turns each prefill
    only what is new (0: one cache, the latest conversation's).
    """

    models: tuple[str, ...] = (DEFAULT_MODEL,)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key: str | None = None
    queue_size: int = DEFAULT_QUEUE
    load: Mapping[str, Any] = field(default_factory=dict)
    cors_origins: tuple[str, ...] = ()
    kv_slots: int = DEFAULT_KV_SLOTS

    def __post_init__(self) -> None:
        if not self.models:
            raise ConfigError("no model to serve")
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ConfigError(f"port {self.port!r} must be an integer in [0, 65535]")
        if not isinstance(self.queue_size, int) or self.queue_size < 0:
            raise ConfigError(f"queue size {self.queue_size!r} must be an integer >= 0")
        if type(self.kv_slots) is not int or self.kv_slots < 0:
            raise ConfigError(f"kv slots {self.kv_slots!r} must be an integer >= 0")
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty")
        if self.api_key is None and not is_loopback(self.host):
            raise ConfigError(
                f"--host {self.host} is reachable from other machines: set --api-key KEY "
                "(clients then send 'Authorization: Bearer KEY'), or keep the default "
                f"--host {DEFAULT_HOST}"
            )
        for origin in self.cors_origins:
            check_origin(origin)
        ids = model_ids(self.models)
        if len(set(ids)) != len(ids):
            raise ConfigError(f"two models share a name: {', '.join(ids)}")


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (127.0.0.0/8, ::1): only then is
    the server out of other machines' reach. A name that does not resolve is not."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def check_origin(origin: str) -> None:
    """Raise ConfigError unless `origin` is "*" or scheme://host[:port]: a browser's Origin
    header never has a path or a trailing slash, so such an entry would never match."""
    if origin == "*":
        return
    parts = urlsplit(origin) if isinstance(origin, str) else None
    if (
        parts is None
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.path
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        raise ConfigError(
            f"--cors-origin {origin!r} is not a web origin: give scheme://host[:port] "
            "(e.g. http://localhost:3000, no path or trailing slash) or *"
        )


def model_id(model: str) -> str:
    """The name clients use for `model`: a registered name as is, a path's last component."""
    return Path(model).name if ("/" in model or "\\" in model) else model


def model_ids(models: tuple[str, ...]) -> list[str]:
    return [model_id(m) for m in models]
