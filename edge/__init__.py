"""edge: run large language models on the devices people already own.

>>> import edge
>>> model = edge.load()  # SmolLM2-135M-Instruct, pulled and exported on first use
>>> print(model.generate("Write a haiku about the sea.", max_tokens=32))  # doctest: +SKIP

The SDK names below are imported on first use (PEP 562): `import edge.format` from devices/,
memory_sched/, quant/ or exporters/ then runs only that leaf, not the engine, model and
speculative modules, so no import cycle runs through this package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edge.errors import (
        ContextOverflowError,
        EdgeError,
        IntegrityError,
        InvalidSamplingError,
        PackageError,
        UnknownModelError,
        UnsupportedModelError,
    )
    from edge.generate import GenerationConfig, GenerationResponse
    from edge.model import Model, load
    from edge.sampling import SamplingConfig

# public name -> the module that defines it
_LAZY = {
    "ContextOverflowError": "edge.errors",
    "EdgeError": "edge.errors",
    "IntegrityError": "edge.errors",
    "InvalidSamplingError": "edge.errors",
    "PackageError": "edge.errors",
    "UnknownModelError": "edge.errors",
    "UnsupportedModelError": "edge.errors",
    "GenerationConfig": "edge.generate",
    "GenerationResponse": "edge.generate",
    "Model": "edge.model",
    "load": "edge.model",
    "SamplingConfig": "edge.sampling",
}

__all__ = [
    "ContextOverflowError",
    "EdgeError",
    "GenerationConfig",
    "GenerationResponse",
    "IntegrityError",
    "InvalidSamplingError",
    "Model",
    "PackageError",
    "SamplingConfig",
    "UnknownModelError",
    "UnsupportedModelError",
    "__version__",
    "load",
]


def __getattr__(name: str) -> Any:
    """Import an SDK name on first access and cache it here, so later lookups are plain."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'edge' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's names plus the SDK names not imported yet, as before they became lazy."""
    return sorted(set(globals()) | set(__all__))
