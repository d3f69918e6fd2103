"""The numpy reference backend in a split placement, and the ORT CUDA backend's refusal here.

numpy computes in float32 like ONNX Runtime's fp32 graphs (measured within 4e-6 of the logit
scale), so a SmolLM2 fp32 model split ORT / numpy / ORT gives the unsplit greedy tokens. No GPU
and no CUDA build of onnxruntime exist here: the CUDA backend must say so and the engine must
fall back to the CPU with that reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from devices import registry
from edge.engine import Engine, EngineConfig
from edge.package import open_package
from edge.placement import Placement


def _greedy(engine: Engine, n: int = 12) -> list[int]:
    engine.reset()
    logits = engine.prefill([1, 504, 3458, 282, 4649, 314])[0]
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = engine.decode(out[-1])
    return out


def test_numpy_segment_gives_the_unsplit_tokens(smollm2_package: Path) -> None:
    package = open_package(smollm2_package)
    plain = _greedy(Engine(package, EngineConfig(max_context=128)))
    placement = Placement.split(32, [(0, "ort_cpu"), (10, "numpy"), (20, "ort_cpu")])
    split = Engine(package, EngineConfig(max_context=128, placement=placement))
    assert [s.backend.name for s in split.segments] == ["ort_cpu", "numpy", "ort_cpu"]
    assert _greedy(split) == plain


def test_cuda_backend_reports_why_and_the_engine_falls_back(smollm2_package: Path) -> None:
    support = registry.create("ort_cuda").is_available()
    assert not support.ok and "CUDAExecutionProvider" in support.reason
    package = open_package(smollm2_package)
    placement = Placement.split(32, [(0, "ort_cpu"), (16, "ort_cuda")])
    engine = Engine(package, EngineConfig(max_context=128, placement=placement))
    assert [s.backend.name for s in engine.segments] == ["ort_cpu", "ort_cpu"]
    assert any("CUDAExecutionProvider" in f.reason for f in engine.fallbacks)
