"""The standard-op static package on the NPU path: accepted whole by the providers' checks,
placed there by the planner, and run split (prompts on one backend, tokens on another).

No NPU exists on this machine (and no onnxruntime build with the QNN, NNAPI or CoreML
provider), so OpenVINO's CPU device stands in for the NPU wherever a graph must actually run:
it compiles the same fixed-shape QDQ graphs an NPU plugin would. The package is A8W8 because
OpenVINO's CPU plugin drops 16-bit Q/DQ pairs (see test_backend_interface.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devices import registry
from edge.engine import Engine, EngineConfig
from edge.evaluate import kl_per_position
from edge.package import Package, open_package
from edge.placement import Placement

OPENVINO = ("openvino", {"INFERENCE_PRECISION_HINT": "f32"})
IDS = list(range(40, 61))  # 21 tokens: one 16-token step, then 5 padded to 16


@pytest.fixture(scope="module")
def static(standard_static_packages: tuple[Path, Path]) -> Package:
    return open_package(standard_static_packages[1], verify="sizes")


def test_qnn_and_nnapi_accept_every_part(static: Package) -> None:
    """QNN's and NNAPI's structural checks (fixed shapes, int8 QDQ around every MatMul/Gemm,
    the provider's op list) accept the embedding, every block and the head, at both step
    lengths. CoreML's ML Program op list has no QuantizeLinear/DequantizeLinear (nor Gather):
    it refuses these int8 graphs, and says so (it takes the float variant's: below)."""
    qnn, nnapi, coreml = (registry.create(n) for n in ("ort_qnn", "ort_nnapi", "ort_coreml"))
    for part in static.manifest.parts:
        assert qnn.supports(part, static) and nnapi.supports(part, static), part.name
    for part in static.manifest.blocks:
        refusal = coreml.supports(part, static)
        assert not refusal and "'DequantizeLinear', 'QuantizeLinear'" in refusal.reason


def test_qnn_takes_the_mixed_package_and_nnapi_refuses_its_16_bit_attention(
    mixed_static_package: Path,
) -> None:
    """The mixed A8/A16 package (`static_attention_bits=16`): QNN's HTP computes 8- and
    16-bit activations, so its check accepts every part; NNAPI quantizes activations as uint8
    only, so it refuses every block and says why (the attention products' uint16
    activations), while the embedding and head, all 8-bit, pass."""
    package = open_package(mixed_static_package, verify="sizes")
    qnn, nnapi = registry.create("ort_qnn"), registry.create("ort_nnapi")
    for part in package.manifest.parts:
        assert qnn.supports(part, package), part.name
        refusal = nnapi.supports(part, package)
        if part.kind == "block":
            assert not refusal and "is uint16, not one of ['uint8']" in refusal.reason
        else:
            assert refusal, part.name


def test_coreml_takes_the_float_variants_blocks(
    standard_static_packages: tuple[Path, Path], tmp_path: Path
) -> None:
    """`--quant static-fp32`: the same standard-op graphs in float32 without Q/DQ. CoreML's
    check accepts every block and the head (the embedding's Gather is not in its list), the
    integer NPUs' checks refuse them (float matmuls), and the logits equal the float32
    model's: the standard-op attention computes what GroupQueryAttention does."""
    from exporters.export import ExportConfig, export

    fp32, static = standard_static_packages
    config = ExportConfig(
        quant="static-fp32",
        static_chunks=(1, 16),
        static_context=64,
        static_ops="standard",
        calibration_tokens=16,
        check_tokenizer=False,
    )
    package = open_package(
        export(static.parent / "llama.gguf", tmp_path / "f32", config, progress=False),
        verify="sizes",
    )
    coreml, qnn = registry.create("ort_coreml"), registry.create("ort_qnn")
    embed, *rest = package.manifest.parts
    assert all(coreml.supports(part, package) for part in rest)
    assert "['Gather']" in coreml.supports(embed, package).reason
    assert "in float, not through DequantizeLinear" in qnn.supports(rest[0], package).reason
    reference = Engine(
        open_package(fp32, verify="sizes"), EngineConfig(max_context=64, threads=1), False
    ).prefill(IDS, all_logits=True)
    logits = Engine(package, EngineConfig(threads=1), False).prefill(IDS, all_logits=True)
    np.testing.assert_allclose(logits, reference, atol=5e-4)


def _kl(reference: np.ndarray, other: np.ndarray) -> float:
    """Mean KL(reference || other) over positions, in nats."""
    return float(kl_per_position(reference, other).mean())


def test_planner_puts_prompts_on_the_npu_and_the_engine_runs_them_apart(
    static: Package, standard_static_packages: tuple[Path, Path]
) -> None:
    """With a Snapdragon's CPU and NPU profiles, the planner runs prompts on the NPU (the
    blocks' fixed-shape graphs) and tokens on the CPU. The engine runs that plan with
    OpenVINO's CPU device standing in for the NPU: prompts on it, tokens on ONNX Runtime,
    which reads the cache the stand-in wrote (its logits equal an all-ONNX Runtime engine's
    given that same cache), and the prompt's logits stay as close to float32 as ONNX Runtime
    running every step (mean KL within 1.5x + 0.05; measured 0.34 and 0.35). Across runtimes
    logits are not compared directly: 8-bit rounding turns their 1e-6 float differences into
    up to ~0.4."""
    from devices.profiles import profile_by_name
    from edge.planner import Device, PlanConfig, make_plan
    from edge.planner.machine import backend_refusals

    refusals = backend_refusals(static, {"ort_cpu", "ort_qnn"}, local=False)
    assert refusals == {}
    devices = [
        Device(profile_by_name("snapdragon-8-gen-3-cpu"), "ort_cpu"),
        Device(profile_by_name("snapdragon-8-gen-3-npu"), "ort_qnn"),
    ]
    plan = make_plan(static.manifest, devices, PlanConfig(prompt_tokens=64), refusals)
    assert {s.backend for s in plan.decode} == {"ort_cpu"}
    on_npu = [(s.start, s.end) for s in plan.prefill if s.backend == "ort_qnn"]
    blocks = {p.block_index + 1 for p in static.manifest.blocks}  # part indices
    assert blocks <= {i for start, end in on_npu for i in range(start, end)}

    n = len(static.manifest.parts)
    prompts = Placement.split(
        n,
        [
            (s.start, *OPENVINO) if s.backend == "ort_qnn" else (s.start, s.backend)
            for s in plan.prefill
        ],
    )
    split = Engine(static, EngineConfig(threads=1, prefill_placement=prompts), progress=False)
    assert split.fallbacks == []
    assert "openvino" in {s.backend.name for s in split.prefill_variants[16]}
    assert {s.backend.name for s in split.variants[1]} == {"ort_cpu"}
    split.prefill(IDS[:16])
    assert split.position == 16 and all(k[:, :, :16].any() for k in split.cache.keys)
    on_cpu = Engine(static, EngineConfig(threads=1), progress=False)
    for theirs, ours in zip(
        (*on_cpu.cache.keys, *on_cpu.cache.values), (*split.cache.keys, *split.cache.values)
    ):
        theirs[...] = ours  # in place: the buffers stay bound
    on_cpu.cache.position = split.position
    for token in IDS[16:]:
        np.testing.assert_array_equal(split.decode(token), on_cpu.decode(token))

    fp32 = open_package(standard_static_packages[0], verify="sizes")
    reference = Engine(fp32, EngineConfig(max_context=64, threads=1), False).prefill(
        IDS, all_logits=True
    )
    split.reset()
    on_ov = split.prefill(IDS, all_logits=True)  # 16 tokens, then 5 padded to 16: both on it
    on_cpu.reset()
    ort_kl = _kl(reference, on_cpu.prefill(IDS, all_logits=True))
    assert _kl(reference, on_ov) <= 1.5 * ort_kl + 0.05, (_kl(reference, on_ov), ort_kl)


def test_the_planner_prices_every_position_the_standard_head_computes(static: Package) -> None:
    """The standard-op head computes every position's logits (a fixed logit count), so a
    prompt costs it a step's worth of positions, not the last one's alone as a contrib head."""
    from dataclasses import replace

    from devices.profiles import profile_by_name
    from edge.planner.costs import model_costs
    from edge.planner.timing import prefill_seconds

    head = model_costs(static.manifest).parts[-1]
    assert head.kind == "head" and head.logits_every_position
    npu = profile_by_name("snapdragon-8-gen-3-npu")
    every = prefill_seconds(head, npu, "ort_qnn", 256, 16, False)
    last = prefill_seconds(
        replace(head, logits_every_position=False), npu, "ort_qnn", 256, 16, False
    )
    assert every > 4 * last
