"""edge: run large language models on the devices people already own.

>>> import edge
>>> model = edge.load()  # SmolLM2-135M-Instruct, pulled and exported on first use
>>> print(model.generate("Write a haiku about the sea.", max_tokens=32))  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

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
