"""edge: run large language models on the devices people already own.

>>> import edge
>>> model = edge.load()  # SmolLM2-135M-Instruct, pulled and exported on first use
>>> print(model.generate("Write a haiku about the sea.", max_tokens=32))  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from edge.errors import (  # noqa: E402
    ContextOverflowError,
    EdgeError,
    IntegrityError,
    InvalidSamplingError,
    PackageError,
    UnknownModelError,
    UnsupportedModelError,
)
from edge.generate import GenerationConfig, GenerationResponse  # noqa: E402
from edge.model import Model, load  # noqa: E402
from edge.sampling import SamplingConfig  # noqa: E402

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
