"""How ONNX Runtime's packed weights are kept between loads (`EngineConfig.prepacked_cache`).

"build": a load maps the packing stored in edge's cache, storing it first where missing;
"use": it maps a stored packing but builds none; "off": it packs on the heap at every load
(devices/backends/ort_prepacked.py). `EDGE_PREPACKED_CACHE` caps the mode for every load of a
machine or a session (a small disk: "off"; a test suite that exports dozens of packages).
"""

from __future__ import annotations

import os
from typing import Literal

from edge.errors import ConfigError

PrepackedMode = Literal["build", "use", "off"]
MODES: tuple[PrepackedMode, ...] = ("off", "use", "build")  # from least to most
ENVIRONMENT = "EDGE_PREPACKED_CACHE"


def check_mode(value: object, name: str = "prepacked_cache") -> PrepackedMode:
    if value not in MODES:
        raise ConfigError(f"{name}={value!r}; allowed: 'build', 'use', 'off'")
    return value  # type: ignore[return-value]


def stricter(a: PrepackedMode, b: PrepackedMode) -> PrepackedMode:
    """Of two modes, the one that builds or maps less ("off" < "use" < "build")."""
    return MODES[min(MODES.index(a), MODES.index(b))]


def effective(mode: PrepackedMode) -> PrepackedMode:
    """`mode` capped by `EDGE_PREPACKED_CACHE` where set."""
    ceiling = os.environ.get(ENVIRONMENT)
    return mode if not ceiling else stricter(mode, check_mode(ceiling, ENVIRONMENT))
