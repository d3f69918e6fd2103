"""NPU graphs of a real package: checked structurally, then run on a real runtime here.

No NPU hardware (and no onnxruntime build with the QNN, CoreML or NNAPI provider) is available
on this machine, so nothing here runs on an NPU. What is shown instead: the fixed-shape int8
QDQ graphs that `edge quantize --quant q-static-int8` writes for SmolLM2 are checked against
each provider's constraints (static shapes, int8 QDQ around every MatMul, the provider's op
set), and the same graphs run on OpenVINO's CPU runtime with outputs close to the fp32 model's.

The package is A8W8 (8-bit activations): OpenVINO's CPU plugin drops 16-bit Q/DQ pairs (see
test_backend_interface.py), so only 8-bit activations run there as the graph says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devices import registry
from devices.backends.npu_ep import check_graph, op_problems, qdq_problems, shape_problems
from devices.backends.onnx_graph import read_graph
from edge.engine import Engine, EngineConfig
from edge.evaluate import kl_per_position
from edge.package import Package, open_package
from edge.placement import Placement

PROMPT = (
    "The three primary colors are red, yellow and blue. Mixing red and yellow gives "
    "orange, while"
)  # 19 tokens


@pytest.fixture(scope="session")
def static_a8w8_package(smollm2_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exporters.export import ExportConfig, quantize_package

    return quantize_package(
        smollm2_package,
        tmp_path_factory.mktemp("npu") / "a8w8",
        ExportConfig(
            quant="q-static-int8",
            static_chunks=(1, 32),
            static_context=256,
            static_activation_bits=8,
            calibration_tokens=128,
        ),
        progress=False,
    )


@pytest.fixture(scope="module")
def static(static_a8w8_package: Path) -> Package:
    return open_package(static_a8w8_package, verify="sizes")


def test_static_qdq_graphs_pass_the_structural_npu_checks(static: Package) -> None:
    """Every graph has fixed shapes but the head's logit count, and int8 QDQ around every
    block matmul; QNN and NNAPI accept the embedding's graphs whole. The blocks are refused
    for one reason only, their ONNX Runtime contrib ops (GroupQueryAttention,
    SimplifiedLayerNormalization), which no NPU provider implements."""
    qnn, nnapi = registry.create("ort_qnn"), registry.create("ort_nnapi")
    embed, *blocks, head = static.manifest.parts
    assert qnn.supports(embed, static) and nnapi.supports(embed, static)
    for part in blocks:
        for step, _ in part.static_graphs:
            graph = read_graph(static.graph_bytes(part, step))
            assert shape_problems(graph) == []
            assert qdq_problems(graph, qnn.rules) == qdq_problems(graph, nnapi.rules) == []
            assert "com.microsoft:GroupQueryAttention" in op_problems(graph, qnn.rules)[0]
        refusal = qnn.supports(part, static)
        assert not refusal and "GroupQueryAttention" in refusal.reason
    refusal = qnn.supports(head, static)
    assert not refusal and "logits_index has dynamic dimension 'n_logits'" in refusal.reason


def test_dynamic_fp32_graph_is_refused_with_the_reasons(smollm2_package: Path) -> None:
    """An fp32 package's graphs take any length and compute matmuls in float: refused, with
    both reasons spelled out."""
    fp32 = open_package(smollm2_package, verify="sizes")
    part = fp32.manifest.parts[1]
    refusal = registry.create("ort_qnn").supports(part, fp32)
    assert not refusal
    assert "no fixed-shape graphs (export with --quant q-static-int8)" in refusal.reason
    assert "input hidden.0 has dynamic dimension 'batch'" in refusal.reason
    problems = check_graph(read_graph(fp32.graph_bytes(part)), registry.create("ort_qnn").rules)
    assert any("not through DequantizeLinear (not QDQ)" in p for p in problems)


def _closeness(reference: np.ndarray, logits: np.ndarray) -> tuple[float, float, float]:
    """Mean and max KL(reference || logits) over positions, and how often the reference's
    greedy token is in the other's top 5."""
    kl = kl_per_position(reference, logits)
    top5 = np.argsort(-logits, axis=-1)[:, :5]
    hits = np.mean([t in row for t, row in zip(reference.argmax(-1), top5)])
    return float(kl.mean()), float(kl.max()), float(hits)


def test_static_qdq_graphs_run_on_openvino_close_to_fp32(
    static: Package, smollm2_package: Path
) -> None:
    """The whole A8W8 package (its 1- and 32-token graphs) on OpenVINO CPU against the fp32
    package on ONNX Runtime. Tolerance, over the prompt's 19 positions: mean KL(fp32 ||
    static) <= 0.5 nat, max <= 1.5, fp32's greedy token in the static model's top 5 at >= 90%
    of positions, and OpenVINO no further from fp32 than ONNX Runtime running the same graphs
    (mean KL within 1.5x + 0.05). Measured: OpenVINO 0.11 / 0.43 / 100%, ONNX Runtime 0.13 /
    0.40 / 100%. int8 activations cost accuracy (A8W8 perplexity is ~13% above fp32): logits
    differ by up to ~6 and the argmax agrees at ~75% of positions, in both runtimes."""
    from edge.tokenizer import Tokenizer

    ids = Tokenizer.from_package(static).encode(PROMPT)
    placement = Placement.single(
        len(static.manifest.parts), "openvino", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    engine = Engine(static, EngineConfig(threads=2, placement=placement))
    assert engine.fallbacks == [] and {s.backend.name for s in engine.segments} == {"openvino"}
    logits = engine.prefill(ids, all_logits=True)  # the 32-token graphs, padded
    engine.reset()
    stepped = np.stack(
        [engine.prefill(ids[:1])[0]] + [engine.decode(t).copy() for t in ids[1:]]
    )  # 1-token graphs
    reference = Engine(
        open_package(smollm2_package, verify="sizes"), EngineConfig(max_context=256, threads=2)
    ).prefill(ids, all_logits=True)
    on_ort = Engine(static, EngineConfig(threads=2)).prefill(ids, all_logits=True)
    ort_mean, _, _ = _closeness(reference, on_ort)
    for ours in (logits, stepped):
        mean, worst, hits = _closeness(reference, ours)
        assert mean <= 0.5 and worst <= 1.5 and hits >= 0.9, (mean, worst, hits)
        assert mean <= 1.5 * ort_mean + 0.05, (mean, ort_mean)


def test_planner_keeps_refused_parts_off_the_npu(static: Package) -> None:
    """The planner asks each backend's own `supports()`: QNN refuses every block and the head
    of this package, so neither the decode nor the prompt placement puts them on the NPU,
    and the plan says why in the backend's words."""
    from devices.profiles import profile_by_name
    from edge.planner import Device, PlanConfig, make_plan
    from edge.planner.machine import backend_refusals

    refusals = backend_refusals(static, {"ort_cpu", "ort_qnn"}, local=False)
    n = len(static.manifest.parts)
    assert {i for b, i in refusals if b == "ort_qnn"} == set(range(1, n))
    devices = [
        Device(profile_by_name("snapdragon-8-gen-3-cpu"), "ort_cpu"),
        Device(profile_by_name("snapdragon-8-gen-3-npu"), "ort_qnn"),
    ]
    plan = make_plan(static.manifest, devices, PlanConfig(max_context=256), refusals)
    for segment in (*plan.decode, *plan.prefill):
        if segment.backend == "ort_qnn":
            assert segment.end <= 1, f"QNN was given parts [{segment.start}, {segment.end})"
    reasons = " ".join(f.reason for f in plan.fallbacks)
    assert "GroupQueryAttention" in reasons


def test_static_prompts_run_on_their_own_placement(static: Package) -> None:
    """An NPU plan's shape: prompts on the fixed-shape 32-token graphs of one placement (here
    the embedding alone on QNN, which this machine lacks, so it falls back to the CPU saying
    why), single tokens on another; the prompt's logits equal the unsplit engine's."""
    from edge.tokenizer import Tokenizer

    ids = Tokenizer.from_package(static).encode(PROMPT)
    n = len(static.manifest.parts)
    prompts = Placement.split(n, [(0, "ort_qnn"), (1, "ort_cpu")])
    engine = Engine(static, EngineConfig(threads=2, prefill_placement=prompts))
    assert set(engine.prefill_variants) == {32} and [
        s.start for s in engine.prefill_variants[32]
    ] == [0, 1]
    assert [f.backend for f in engine.fallbacks] == ["ort_qnn"]
    logits = engine.prefill(ids, all_logits=True)
    plain = Engine(static, EngineConfig(threads=2)).prefill(ids, all_logits=True)
    np.testing.assert_array_equal(logits, plain)
    assert engine.decode(ids[0]).shape == (static.spec.vocab_size,)  # tokens: decode placement
