"""`edge serve`: an OpenAI-compatible HTTP server over edge's engine (the `serve` extra).

>>> from edge.server import ServeConfig, serve
>>> serve(ServeConfig(models=("smollm2-135m",), port=8080))  # doctest: +SKIP

Modules, one job each: `config` (what to serve, where, who may call), `schemas` (request
bodies, checked), `worker` (the engine thread and its bounded queue), `app` (the routes),
`responses` (OpenAI's shapes), `auth` (Bearer keys), `metrics` (Prometheus), `page` (the chat
page) and `serve` (uvicorn). Only `serve` and `app` need the extra's packages: importing
`edge.server` alone does not, so the CLI can say what to install.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from edge.errors import ConfigError
from edge.server.config import ServeConfig

if TYPE_CHECKING:
    from edge.server.serve import BackgroundServer, serve

EXTRA = ("starlette", "uvicorn", "prometheus_client")
_LAZY = {"serve": "edge.server.serve", "BackgroundServer": "edge.server.serve"}
__all__ = ["BackgroundServer", "ServeConfig", "check_extra", "serve"]


def check_extra() -> None:
    """Raise ConfigError naming the install command if the `serve` extra is missing."""
    missing = [name for name in EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"edge serve needs {', '.join(missing)}: pip install 'edge[serve]'")


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge.server' has no attribute {name!r}")
    check_extra()
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
