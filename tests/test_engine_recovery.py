"""A device that leaves mid-generation: the engine re-places its parts and goes on.

A backend whose failures mean its device left (`recovers`, as a cluster peer's does) is
re-placed on ONNX Runtime's CPU backend, the KV cache is rebuilt from the tokens so far, and
the step runs again: the greedy text equals the undisturbed one. The departing device is
ONNX Runtime's CPU backend made to fail on its n-th run (fault injection; the cluster's own
tests kill real worker processes).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from devices import registry
from devices.backends.ort_cpu import OrtCpuBackend
from edge.engine import Engine, EngineConfig
from edge.errors import BackendError
from edge.package import open_package
from edge.placement import Placement

PROMPT = [1, 504, 3458, 282, 4649, 314]


class LeavingBackend(OrtCpuBackend):
    """ORT's CPU backend whose device 'leaves' on its `fail_at`-th run (class-wide count)."""

    name: ClassVar[str] = "test_leaving"
    recovers: ClassVar[bool] = True
    runs = 0
    fail_at = 0

    def run(self, loaded, position: int, size: int) -> None:
        type(self).runs += 1
        if type(self).runs == type(self).fail_at:
            raise ConnectionError("the peer stopped answering")
        super().run(loaded, position, size)


@pytest.fixture
def leaving() -> type[LeavingBackend]:
    registry.register(LeavingBackend)
    LeavingBackend.runs = 0
    yield LeavingBackend
    registry.unregister(LeavingBackend.name)


def _greedy(engine: Engine, n: int = 10) -> list[int]:
    logits = engine.prefill(PROMPT)[0]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = engine.decode(out[-1])
    return out


@pytest.mark.parametrize("fail_at", [1, 5])
def test_engine_recovers_from_a_device_that_leaves(
    smollm2_package: Path, leaving: type[LeavingBackend], fail_at: int
) -> None:
    """Lost during the prompt (run 1) or mid-decode (run 5): same tokens, one fallback that
    names the lost backend, and its parts now on ort_cpu."""
    package = open_package(smollm2_package)
    plain = _greedy(Engine(package, EngineConfig(max_context=64, threads=1)))
    leaving.fail_at = fail_at
    placement = Placement.split(32, [(0, "ort_cpu"), (12, leaving.name), (24, "ort_cpu")])
    engine = Engine(package, EngineConfig(max_context=64, threads=1, placement=placement))
    assert _greedy(engine) == plain
    (fallback,) = engine.fallbacks
    assert (fallback.start, fallback.end, fallback.backend) == (12, 24, leaving.name)
    assert "was lost" in fallback.reason and "stopped answering" in fallback.reason
    assert [s.backend.name for s in engine.segments] == ["ort_cpu"] * 3


def test_engine_does_not_hide_a_local_backend_failure(smollm2_package: Path) -> None:
    """A backend that does not recover (a local runtime) still fails loudly: BackendError."""

    class Failing(OrtCpuBackend):
        name: ClassVar[str] = "test_failing"

        def run(self, loaded, position: int, size: int) -> None:
            raise RuntimeError("runtime crashed")

    registry.register(Failing)
    try:
        placement = Placement.split(32, [(0, "ort_cpu"), (12, "test_failing")])
        engine = Engine(
            open_package(smollm2_package), EngineConfig(max_context=64, placement=placement)
        )
        with pytest.raises(BackendError, match="runtime crashed"):
            engine.prefill(PROMPT)
    finally:
        registry.unregister("test_failing")
