"""The Backend interface without a model: registry, options, availability, structural checks.

No NPU hardware and no NPU-enabled onnxruntime build are available here: the QNN, CoreML and
NNAPI backends must say so in `is_available`, and their ahead-of-time checks are exercised on
small graphs built in the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from devices import registry
from devices.backend import Support
from devices.backends import openvino_runtime
from devices.backends.npu_ep import QnnBackend, check_graph, qdq_problems, shape_problems
from devices.backends.onnx_graph import read_graph
from devices.backends.ort_cpu import OrtCpuBackend
from edge.errors import ConfigError
from edge.format import PartEntry


def test_builtin_backends_are_registered_by_name() -> None:
    assert {"ort_cpu", "openvino", "ort_qnn", "ort_coreml", "ort_nnapi"} <= set(registry.names())
    assert registry.create("ort_cpu", {"threads": 2}).describe() == "ort_cpu on CPU"
    with pytest.raises(ConfigError, match=r"unknown backend 'npu'; known: .*ort_cpu"):
        registry.create("npu")


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("ort_cpu", {"thread": 2}, "no option 'thread'; allowed: .*threads"),
        ("ort_cpu", {"threads": True}, "threads=True must be int"),
        ("ort_cpu", {"threads": 0}, "threads=0; must be >= 1"),
        ("ort_cpu", {"optimization": "max"}, "optimization='max'; allowed"),
        (
            "ort_qnn",
            {"htp_performance_mode": "turbo"},
            "performance_mode='turbo'; allowed: .*burst",
        ),
        ("ort_coreml", {"MLComputeUnits": "NPU"}, "MLComputeUnits='NPU'; allowed"),
        ("openvino", {"INFERENCE_PRECISION_HINT": ["f32"]}, "must be a string or number"),
    ],
)
def test_bad_options_are_config_errors_naming_them(name: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        registry.create(name, options)


def test_openvino_computes_in_f32_unless_told_otherwise() -> None:
    """bf16 (OpenVINO's default on this CPU) changes greedy tokens, so f32 is asked for."""
    assert registry.create("openvino").config()["INFERENCE_PRECISION_HINT"] == "f32"
    backend = registry.create("openvino", {"INFERENCE_PRECISION_HINT": "bf16", "threads": 2})
    assert backend.config()["INFERENCE_PRECISION_HINT"] == "bf16"
    assert backend.config()["INFERENCE_NUM_THREADS"] == "2"


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        ("ort_qnn", "QNNExecutionProvider"),
        ("ort_coreml", "CoreMLExecutionProvider"),
        ("ort_nnapi", "NnapiExecutionProvider"),
    ],
)
def test_npu_providers_say_they_are_missing_here(name: str, provider: str) -> None:
    """This onnxruntime wheel has no NPU provider: each backend says so and how to get one."""
    support = registry.create(name).is_available()
    assert not support and f"has no {provider}" in support.reason
    assert "; install " in support.reason or "; use " in support.reason


def test_missing_openvino_is_reported_not_pretended(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ImportError("No module named 'openvino'")

    monkeypatch.setattr(openvino_runtime, "_core", missing)
    support = registry.create("openvino").is_available()
    assert not support and "pip install 'edge[openvino]'" in support.reason
    assert registry.create("openvino", {"device": "NPU"}).is_available().ok is False


def test_a_refusal_must_say_why() -> None:
    assert Support(True) and not Support(False, "no")
    with pytest.raises(ValueError, match="must say why"):
        Support(False)


def test_registering_a_backend_and_name_clashes() -> None:
    class Custom(OrtCpuBackend):
        name: ClassVar[str] = "test_backend_interface_custom"

    registry.register(Custom)
    try:
        assert isinstance(registry.create(Custom.name), Custom)
        with pytest.raises(ConfigError, match="already registered"):
            registry.register(type("Other", (OrtCpuBackend,), {"name": Custom.name}))
    finally:
        registry.unregister(Custom.name)
    assert Custom.name not in registry.names()
    with pytest.raises(ConfigError, match="fallback"):
        registry.unregister("ort_cpu")


# ---- structural checks on small graphs ------------------------------------------------------


def _qdq_matmul(path: Path, activation: int, dims: list[int | str], reshape: bool = False) -> Path:
    """y = MatMul(DQ(Q(x)), DQ(W int8)), activation Q of type `activation`."""
    zero = {TensorProto.UINT8: np.uint8, TensorProto.UINT16: np.uint16}[activation]
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "s"),
        numpy_helper.from_array(np.array(8, zero), "z"),
        numpy_helper.from_array(np.eye(8, dtype=np.int8), "w"),
        numpy_helper.from_array(np.array(0.1, np.float32), "ws"),
        numpy_helper.from_array(np.array([8, 8], np.int64), "shape"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"]),
        helper.make_node("DequantizeLinear", ["w", "ws"], ["dw"]),
    ]
    if reshape:
        nodes.append(helper.make_node("Reshape", ["dw", "shape"], ["dw2"]))
    nodes.append(helper.make_node("MatMul", ["dq", "dw2" if reshape else "dw"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(model, path)
    return path


@dataclass
class _Folder:
    """A stand-in for a package: graphs in one folder (what `supports` reads)."""

    root: Path
    manifest: object = None

    def graph_bytes(self, part: PartEntry, step: int | None = None, prefill: bool = False) -> bytes:
        return (self.root / (dict(part.static_graphs)[step] if step else part.graph)).read_bytes()

    def tensor(self, entry: object) -> np.ndarray:
        raise AssertionError("supports must not read weights")


def _part(graph: str, static: bool = True) -> PartEntry:
    return PartEntry(
        "block.0", "block", graph, (), ("x",), ("y",), 0, ((8, graph),) if static else ()
    )


def test_graph_reader_matches_onnx(tmp_path: Path) -> None:
    path = _qdq_matmul(tmp_path / "g.onnx", TensorProto.UINT8, [8, "n"], reshape=True)
    graph = read_graph(path.read_bytes())
    assert [n.op_type for n in graph.nodes] == [n.op_type for n in onnx.load(path).graph.node]
    assert graph.inputs[0].dims == (8, "n") and graph.inputs[0].elem_type == "float32"
    assert graph.initializers["w"].dims == (8, 8) and graph.initializers["w"].elem_type == "int8"
    assert graph.quantized_type("q") == "uint8" and graph.quantize_types() == {"uint8"}


def test_npu_check_accepts_static_int8_qdq_and_says_why_not_otherwise(tmp_path: Path) -> None:
    rules = QnnBackend.rules
    good = read_graph(
        _qdq_matmul(tmp_path / "a.onnx", TensorProto.UINT8, [8, 8], reshape=True).read_bytes()
    )
    assert check_graph(good, rules) == []
    dynamic = read_graph(
        _qdq_matmul(tmp_path / "b.onnx", TensorProto.UINT8, ["batch", 8]).read_bytes()
    )
    assert shape_problems(dynamic) == ["input x has dynamic dimension 'batch'"]
    wide = read_graph(_qdq_matmul(tmp_path / "c.onnx", TensorProto.UINT16, [8, 8]).read_bytes())
    assert qdq_problems(wide, rules) == []  # QNN's HTP computes 16-bit activations
    nnapi = registry.backend_class("ort_nnapi").rules
    assert "activation q is uint16, not one of ['uint8']" in qdq_problems(wide, nnapi)[0]
    float_matmul = onnx.load(tmp_path / "a.onnx")
    del float_matmul.graph.node[:3]  # MatMul now reads x and a weight directly, in float
    float_matmul.graph.node[0].input[:] = ["x", "x"]
    problems = qdq_problems(read_graph(float_matmul.SerializeToString()), rules)
    assert problems and "not through DequantizeLinear" in problems[0]


def test_npu_backend_supports_reads_every_static_graph(tmp_path: Path) -> None:
    _qdq_matmul(tmp_path / "ok.onnx", TensorProto.UINT8, [8, 8])
    _qdq_matmul(tmp_path / "dyn.onnx", TensorProto.UINT8, ["batch", 8])
    folder, qnn = _Folder(tmp_path), registry.create("ort_qnn")
    assert qnn.supports(_part("ok.onnx"), folder)
    refusal = qnn.supports(_part("dyn.onnx"), folder)
    assert not refusal and "dyn.onnx: input x has dynamic dimension 'batch'" in refusal.reason
    refusal = qnn.supports(_part("ok.onnx", static=False), folder)
    assert "no fixed-shape graphs" in refusal.reason and "q-static-int8" in refusal.reason


def test_openvino_refuses_16_bit_qdq_it_would_not_compute_as_written(tmp_path: Path) -> None:
    """Measured on OpenVINO 2026.4 CPU: a uint16 Q/DQ pair is dropped (no clipping)."""
    _qdq_matmul(tmp_path / "a8.onnx", TensorProto.UINT8, [8, 8])
    _qdq_matmul(tmp_path / "a16.onnx", TensorProto.UINT16, [8, 8])
    backend = registry.create("openvino")
    if not backend.is_available():
        pytest.skip(backend.is_available().reason)
    folder = _Folder(tmp_path)
    assert backend.supports(_part("a8.onnx"), folder)
    refusal = backend.supports(_part("a16.onnx"), folder)
    assert not refusal and "drops 16-bit QuantizeLinear/DequantizeLinear" in refusal.reason
