"""A model split over two real runtimes gives the unsplit model's tokens; failing backends.

SmolLM2 runs as three segments alternating ONNX Runtime's CPU backend and OpenVINO's own
runtime (on the CPU), activations crossing at the segment boundaries, and must produce exactly
the greedy tokens of the unsplit ONNX Runtime run, in fp32 and in int4. The int4 package is
exported with accuracy_level 0 (MatMulNBits in float), which both runtimes honour: with
accuracy_level 4 both quantize activations to int8 per block, and a 1e-6 difference in the
float ops before a matmul flips an int8 rounding, so two runtimes then agree only up to near
ties (measured: logits within ~0.5, a different token after 15 greedy steps).

Failures are injected with small `Backend` subclasses that fail on purpose: at load (the engine
must fall back to ONNX Runtime's CPU backend, log and record why) and on the Nth run (the
engine raises `BackendError` naming the backend and the parts, and works again after reset).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from devices import registry
from devices.backend import Executable, Loaded, Resident
from devices.backends.ort_cpu import OrtCpuBackend
from edge.engine import EngineConfig
from edge.errors import BackendError, ConfigError
from edge.model import Model
from edge.package import open_package
from edge.placement import Placement, SegmentPlacement

PROMPT = "The three primary colors are"
TOKENS = 24
OV = {"INFERENCE_PRECISION_HINT": "f32"}  # OpenVINO computes in bf16 by default on this CPU
PARTS = 32  # embed, 30 blocks, head


def _model(package: Path, placement: Placement | None = None) -> Model:
    config = EngineConfig(max_context=128, threads=2, placement=placement)
    return Model(open_package(package, verify="sizes"), config)


def _greedy(model: Model) -> list[int]:
    return [r.token for r in model.stream(PROMPT, max_tokens=TOKENS, ignore_eos=True)]


@pytest.fixture(scope="session")
def split_int4_package(smollm2_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exporters.export import ExportConfig, quantize_package

    return quantize_package(
        smollm2_package,
        tmp_path_factory.mktemp("split") / "int4",
        ExportConfig(quant="int4", accuracy_level=0),
        progress=False,
    )


@pytest.fixture(scope="module")
def packages(smollm2_package: Path, split_int4_package: Path) -> dict[str, Path]:
    return {"fp32": smollm2_package, "int4": split_int4_package}


@pytest.fixture(scope="module")
def references(packages: dict[str, Path]) -> dict[str, list[int]]:
    """The unsplit model's greedy tokens (all parts on ONNX Runtime's CPU backend)."""
    return {precision: _greedy(_model(path)) for precision, path in packages.items()}


THREE_WAY = {
    "ort-ov-ort": Placement.split(PARTS, [(0, "ort_cpu"), (11, "openvino", OV), (21, "ort_cpu")]),
    "ov-ort-ov": Placement.split(
        PARTS, [(0, "openvino", OV), (11, "ort_cpu"), (21, "openvino", OV)]
    ),
}


@pytest.mark.parametrize("layout", sorted(THREE_WAY))
@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_three_segments_over_two_runtimes_match_unsplit(
    precision: str, layout: str, packages: dict[str, Path], references: dict[str, list[int]]
) -> None:
    """24 greedy tokens of the split model equal the unsplit model's, token for token."""
    split = _model(packages[precision], THREE_WAY[layout])
    used = [s.backend.name for s in split.engine.segments]
    assert used == [s.backend for s in THREE_WAY[layout].segments]
    assert split.engine.fallbacks == []
    assert _greedy(split) == references[precision]
    assert len(references[precision]) == TOKENS


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_prompts_on_their_own_placement_give_the_same_tokens(
    precision: str, packages: dict[str, Path], references: dict[str, list[int]]
) -> None:
    """A plan's prompt placement is executed, not only reported: prompts run split over
    OpenVINO and ONNX Runtime while tokens run unsplit on ONNX Runtime, sharing one KV cache;
    the greedy tokens equal the unsplit model's."""
    prompts = THREE_WAY["ov-ort-ov"]
    config = EngineConfig(max_context=128, threads=2, prefill_placement=prompts)
    model = Model(open_package(packages[precision], verify="sizes"), config)
    engine = model.engine
    prompt_chain = engine.prefill_segments or next(iter(engine.prefill_variants.values()))
    assert [s.backend.name for s in prompt_chain] == [s.backend for s in prompts.segments]
    assert [s.backend.name for s in engine.segments] == ["ort_cpu"]
    assert _greedy(model) == references[precision]


class FailingLoad(OrtCpuBackend):
    """A real backend whose load fails, like a device that vanished after discovery."""

    name: ClassVar[str] = "test_split_failing_load"

    def load(self, executable: Executable, resident: Resident) -> Loaded:
        raise RuntimeError("device lost while loading (injected)")


class FailingRun(OrtCpuBackend):
    """A real backend whose Nth run fails once (class-wide), like an NPU timeout."""

    name: ClassVar[str] = "test_split_failing_run"
    fail_at: ClassVar[int] = 6
    runs: ClassVar[int] = 0

    def run(self, loaded: Loaded, position: int, size: int) -> None:
        type(self).runs += 1
        if type(self).runs == self.fail_at:
            raise RuntimeError("NPU timeout (injected)")
        super().run(loaded, position, size)


@pytest.fixture
def failing_backends() -> Iterator[None]:
    for cls in (FailingLoad, FailingRun):
        registry.register(cls)
    FailingRun.runs = 0
    yield
    for cls in (FailingLoad, FailingRun):
        registry.unregister(cls.name)


def _middle(backend: str) -> Placement:
    return Placement.split(PARTS, [(0, "ort_cpu"), (11, backend), (21, "ort_cpu")])


def test_backend_failing_at_load_falls_back_to_cpu_with_reason(
    failing_backends: None,
    packages: dict[str, Path],
    references: dict[str, list[int]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The segment runs on ORT CPU instead; the reason is logged and kept on the engine."""
    with caplog.at_level(logging.WARNING, logger="edge.engine"):
        model = _model(packages["int4"], _middle(FailingLoad.name))
    (fallback,) = model.engine.fallbacks
    assert (fallback.start, fallback.end, fallback.backend) == (11, 21, FailingLoad.name)
    assert fallback.used == "ort_cpu" and fallback.when == "compile"
    assert "device lost while loading" in fallback.reason
    assert "device lost while loading" in caplog.text
    assert {s.backend.name for s in model.engine.segments} == {"ort_cpu"}
    assert _greedy(model) == references["int4"]


def test_unavailable_backend_falls_back_saying_what_is_missing(packages: dict[str, Path]) -> None:
    """QNN is not in this onnxruntime: a placement asking for it runs on the CPU, and says so."""
    model = _model(packages["int4"], _middle("ort_qnn"))
    (fallback,) = model.engine.fallbacks
    assert fallback.when == "available" and "QNNExecutionProvider" in fallback.reason


def test_backend_failing_mid_run_raises_and_recovers_after_reset(
    failing_backends: None, packages: dict[str, Path], references: dict[str, list[int]]
) -> None:
    """BackendError names the backend and the part range; reset() makes the engine usable."""
    model = _model(packages["int4"], _middle(FailingRun.name))
    with pytest.raises(BackendError) as info:
        _greedy(model)
    error = info.value
    assert (error.backend, error.start, error.end) == (FailingRun.name, 11, 21)
    assert "parts [11, 21) (block.10..block.19)" in str(error)
    assert "NPU timeout" in str(error) and error.device == "CPU"
    with pytest.raises(BackendError, match="reset"):
        model.engine.decode(42)  # refuses until reset, rather than run a broken backend
    model.engine.reset()
    assert _greedy(model) == references["int4"]
    assert model.engine.fallbacks == []  # reloaded on its own backend, not replaced


def test_placement_must_cover_the_parts_contiguously(smollm2_package: Path) -> None:
    """Gaps, overlaps, wrong lengths and unknown backends are ConfigErrors naming the problem."""
    with pytest.raises(ConfigError, match="not contiguous"):
        Placement((SegmentPlacement(0, 10), SegmentPlacement(11, PARTS)))
    with pytest.raises(ConfigError, match="start at 0"):
        Placement((SegmentPlacement(1, PARTS),))
    with pytest.raises(ConfigError, match="non-empty"):
        SegmentPlacement(5, 5)
    with pytest.raises(ConfigError, match=r"\[0, 31\) but the package has 32 parts"):
        _model(smollm2_package, Placement.single(31))
    with pytest.raises(ConfigError, match="unknown backend 'tpu'"):
        _model(smollm2_package, Placement.single(PARTS, "tpu"))
    placement = THREE_WAY["ort-ov-ort"]
    assert Placement.from_dict(placement.to_dict()) == placement


def test_session_groups_cover_the_parts_under_the_cap() -> None:
    from edge.placement import session_groups

    assert session_groups([10, 10, 10, 10], 25) == [(0, 2), (2, 4)]
    assert session_groups([30, 5, 5], 25) == [(0, 1), (1, 3)]  # a large part stands alone
    assert session_groups([1, 2, 3], 100) == [(0, 3)]
    assert session_groups([], 10) == []


def test_a_package_large_for_the_memory_loads_as_several_sessions(
    packages: dict[str, Path], references: dict[str, list[int]], monkeypatch
) -> None:
    """With little memory available, the parts load as sessions of at most SESSION_BYTES
    (each session's file pages dropped before the next loads): the same greedy tokens."""
    import edge.placement
    from devices.memory_info import read_memory

    monkeypatch.setattr(edge.placement, "SESSION_BYTES", 16 << 20)
    memory = read_memory()
    small = type(memory)(**{**vars(memory), "available": 100 << 20})
    monkeypatch.setattr("devices.memory_info.read_memory", lambda: small)
    model = _model(packages["int4"])
    assert len(model.engine.segments) >= 4  # ~100 MB of int4 in groups of at most 16 MB
    assert _greedy(model) == references["int4"]
