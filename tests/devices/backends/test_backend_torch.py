"""The PyTorch backend: segments computed from the spec's weights on a torch device.

Here torch is the CPU wheel, so the device is the CPU; the same code path runs on CUDA and MPS
(the lent GPU machine checks it when a session has one). float32 on the CPU computes like ONNX
Runtime's fp32 graphs (measured within 1e-5 of the logit scale), so SmolLM2 fp32 on torch, whole
or split between ORT and torch, gives ORT's greedy tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from devices import registry
from edge.engine import Engine, EngineConfig
from edge.errors import ConfigError
from edge.package import open_package
from edge.placement import Placement

PROMPT = [1, 504, 3458, 282, 4649, 314]
CPU = {"device": "cpu"}


def _greedy(engine: Engine, n: int = 12) -> list[int]:
    engine.reset()
    logits = engine.prefill(PROMPT)[0]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = engine.decode(out[-1])
    return out


def test_torch_segments_give_the_ort_tokens(smollm2_package: Path) -> None:
    package = open_package(smollm2_package)
    reference = Engine(package, EngineConfig(max_context=128, threads=1))
    expected = reference.prefill(PROMPT, all_logits=True)
    plain = _greedy(reference)
    for placement in (
        Placement.single(32, "torch", CPU),
        Placement.split(32, [(0, "ort_cpu"), (10, "torch", CPU), (20, "ort_cpu")]),
    ):
        engine = Engine(package, EngineConfig(max_context=128, threads=1, placement=placement))
        assert not engine.fallbacks
        assert "torch" in {s.backend.name for s in engine.segments}
        logits = engine.prefill(PROMPT, all_logits=True)
        assert np.abs(logits - expected).max() <= 1e-5 * np.abs(expected).max()
        assert _greedy(engine) == plain
        engine.close()


def test_torch_backend_says_what_it_cannot_do() -> None:
    assert registry.create("torch", CPU).is_available()
    missing = registry.create("torch", {"device": "cuda:7"}).is_available()
    assert not missing and "CUDA" in missing.reason
    with pytest.raises(ConfigError, match="dtype"):
        registry.create("torch", {"dtype": "float64"})
