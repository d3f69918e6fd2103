"""Every backend a placement may name: devices/' registry, and those edge composes itself.

The streamed path (weights through memory_sched's window, computed by devices/' kernels) and a
cluster worker's segment are Backends like the others, but they live in edge/: the first
composes devices/ and memory_sched/, which must not import each other, the second the
cluster's transport; devices/ therefore cannot register them. This module is the one lookup the
engine and the planner use, so a placement naming "streamed" runs like one naming "ort_cpu".

>>> backend_class("streamed").reads_graphs
False
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from devices.backend import Backend, Options

# name -> (module, class): imported on first use (the streamed path loads llvmlite).
_COMPOSED = {
    "streamed": ("edge.streaming.backend", "StreamedBackend"),
    "cluster": ("edge.cluster.backend", "ClusterBackend"),  # a worker's range of parts
    "tensor": ("edge.cluster.tensor_backend", "TensorBackend"),  # blocks sharded over workers
}


def backend_class(name: str) -> type[Backend]:
    """The class registered as `name`; `ConfigError` lists the known names otherwise."""
    if name in _COMPOSED:
        module, cls = _COMPOSED[name]
        return getattr(import_module(module), cls)
    from devices import registry
    from edge.errors import ConfigError

    if name not in registry.names():
        raise ConfigError(f"unknown backend {name!r}; known: {list(names())}")
    return registry.backend_class(name)


def names() -> tuple[str, ...]:
    from devices import registry

    return tuple(sorted({*registry.names(), *_COMPOSED}))


def create(name: str, options: Options | None = None) -> Backend:
    """A backend instance; options are validated (`ConfigError` naming the bad one)."""
    return backend_class(name)(options)
