"""Backends by name: the placement and the CLI name a backend, the registry finds its class.

Built-in backends are registered here; a test or a plugin registers its own (a subclass of
`Backend`) with `register`, and removes it with `unregister`.

>>> from devices.registry import create, names
>>> "openvino" in names()
True
>>> create("ort_cpu", {"threads": 2}).describe()
'ort_cpu on CPU'
"""

from __future__ import annotations

from devices.backend import Backend, Options
from devices.backends.npu_ep import CoreMlBackend, NnapiBackend, QnnBackend
from devices.backends.numpy_reference import NumpyBackend
from devices.backends.openvino_runtime import OpenVinoBackend
from devices.backends.ort_cpu import OrtCpuBackend
from devices.backends.ort_cuda import OrtCudaBackend
from devices.backends.torch_spec import TorchBackend
from edge.errors import ConfigError

DEFAULT = OrtCpuBackend.name
_BACKENDS: dict[str, type[Backend]] = {
    cls.name: cls
    for cls in (
        OrtCpuBackend,
        OrtCudaBackend,
        OpenVinoBackend,
        QnnBackend,
        CoreMlBackend,
        NnapiBackend,
        NumpyBackend,
        TorchBackend,
    )
}


def register(cls: type[Backend], *, replace: bool = False) -> type[Backend]:
    """Make `cls` available by `cls.name` (usable as a class decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise TypeError(f"{cls!r} is not a Backend subclass")
    if cls.name in _BACKENDS and _BACKENDS[cls.name] is not cls and not replace:
        raise ConfigError(
            f"a backend named {cls.name!r} is already registered "
            f"({_BACKENDS[cls.name].__name__}); pass replace=True to override"
        )
    _BACKENDS[cls.name] = cls
    return cls


def unregister(name: str) -> None:
    if name == DEFAULT:
        raise ConfigError(f"{DEFAULT!r} is every backend's fallback and cannot be removed")
    _BACKENDS.pop(name, None)


def names() -> tuple[str, ...]:
    return tuple(sorted(_BACKENDS))


def backend_class(name: str) -> type[Backend]:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise ConfigError(f"unknown backend {name!r}; known: {list(names())}") from None


def create(name: str, options: Options | None = None) -> Backend:
    """A backend instance; options are validated (`ConfigError` naming the bad one)."""
    return backend_class(name)(options)
