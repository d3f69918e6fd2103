"""Merging consecutive part graphs into one model: the merged model computes exactly what the
parts compute one after another, shares initializers once, and hides tensors passed between
parts."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edge.errors import PackageError
from edge.graph_merge import merge_models

OPSET = [helper.make_opsetid("", 17)]
W = np.arange(12, dtype=np.float32).reshape(3, 4) / 10  # shared by name between the parts


def _model(
    name: str, nodes: list, inputs: list, outputs: list, initializers: list | None = None
) -> bytes:
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers or [])
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _info(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _part_a() -> bytes:
    """h1 = x @ W + shared."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["a.mm"]),
        helper.make_node("Add", ["a.mm", "shared"], ["h1"]),
    ]
    return _model(
        "a",
        nodes,
        [_info("x", [2, 3]), _info("shared", [2, 4])],
        [_info("h1", [2, 4])],
        [numpy_helper.from_array(W, "W")],
    )


def _part_b() -> bytes:
    """h2 = tanh(h1) * shared + (W^T @ W)[0]; also outputs side = h1 * 2."""
    nodes = [
        helper.make_node("Tanh", ["h1"], ["b.t"]),
        helper.make_node("Mul", ["b.t", "shared"], ["b.m"]),
        helper.make_node("Transpose", ["W"], ["b.wt"]),
        helper.make_node("MatMul", ["b.wt", "W"], ["b.ww"]),
        helper.make_node("ReduceSum", ["b.ww", "b.axes"], ["b.row"], keepdims=0),
        helper.make_node("Add", ["b.m", "b.row"], ["h2"]),
        helper.make_node("Mul", ["h1", "b.two"], ["side"]),
    ]
    inits = [
        numpy_helper.from_array(W, "W"),
        numpy_helper.from_array(np.array([0], np.int64), "b.axes"),
        numpy_helper.from_array(np.array(2.0, np.float32), "b.two"),
    ]
    return _model(
        "b",
        nodes,
        [_info("h1", [2, 4]), _info("shared", [2, 4])],
        [_info("h2", [2, 4]), _info("side", [2, 4])],
        inits,
    )


def _part_c() -> bytes:
    """h3 = relu(h2 - shared)."""
    nodes = [
        helper.make_node("Sub", ["h2", "shared"], ["c.s"]),
        helper.make_node("Relu", ["c.s"], ["h3"]),
    ]
    return _model("c", nodes, [_info("h2", [2, 4]), _info("shared", [2, 4])], [_info("h3", [2, 4])])


def _run(model: bytes, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    wanted = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    outputs = session.run(names, {k: v for k, v in feeds.items() if k in wanted})
    return dict(zip(names, outputs, strict=True))


def _run_in_sequence(models: list[bytes], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    values = dict(feeds)
    for model in models:
        values.update(_run(model, values))
    return values


@pytest.fixture
def feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((2, 3)).astype(np.float32),
        "shared": rng.standard_normal((2, 4)).astype(np.float32),
    }


def test_merged_two_parts_compute_the_same_as_running_them_in_turn(feeds: dict) -> None:
    """Merging parts A and B gives the outputs of running A then B."""
    parts = [_part_a(), _part_b()]
    merged = _run(merge_models(parts, name="ab"), feeds)
    expected = _run_in_sequence(parts, feeds)
    assert set(merged) == {"h2", "side"}
    for name, value in merged.items():
        np.testing.assert_array_equal(value, expected[name])


def test_merged_three_parts_compute_the_same_as_running_them_in_turn(feeds: dict) -> None:
    """Merging parts A, B and C gives the outputs of running A, B, C in turn."""
    parts = [_part_a(), _part_b(), _part_c()]
    merged = _run(merge_models(parts), feeds)
    expected = _run_in_sequence(parts, feeds)
    assert set(merged) == {"side", "h3"}
    for name, value in merged.items():
        np.testing.assert_array_equal(value, expected[name])


def test_merged_graph_keeps_shared_initializer_once_and_hides_internal_tensors() -> None:
    """A shared initializer appears once; a tensor passed between parts is neither in nor out."""
    merged = onnx.load_from_string(merge_models([_part_a(), _part_b(), _part_c()], name="seg"))
    onnx.checker.check_model(merged)
    graph = merged.graph
    initializers = [t.name for t in graph.initializer]
    assert initializers.count("W") == 1
    assert sorted(initializers) == ["W", "b.axes", "b.two"]
    inputs = [i.name for i in graph.input]
    outputs = [o.name for o in graph.output]
    assert inputs == ["x", "shared"]  # "shared" feeds every part but is one input
    assert outputs == ["side", "h3"]
    assert "h1" not in inputs + outputs and "h2" not in inputs + outputs
    assert graph.name == "seg"
    assert len(graph.node) == 2 + 7 + 2
    assert [o.version for o in merged.opset_import] == [17]


def test_single_model_passes_through_unchanged() -> None:
    """Merging one part returns its bytes untouched."""
    a = _part_a()
    assert merge_models([a]) == a


def test_garbage_bytes_are_a_package_error() -> None:
    """Bytes that are not an ONNX model fail with PackageError, not a crash."""
    with pytest.raises(PackageError):
        merge_models([_part_a(), b"\x0a\xff\xff\xff"])  # length runs past the end
    with pytest.raises(PackageError, match="no graph"):
        merge_models([_part_a(), onnx.ModelProto(ir_version=8).SerializeToString()])


def test_parts_with_different_opsets_merge_correctly_or_fail_clearly(feeds: dict) -> None:
    """Parts written for different opset versions either merge into a valid model or are
    refused with PackageError; never an invalid graph."""
    a = onnx.load_from_string(_part_a())
    a.opset_import[0].version = 13
    nodes = [helper.make_node("ReduceMean", ["h1", "axes"], ["h2"])]  # axes input: opset 18+
    b = helper.make_model(
        helper.make_graph(
            nodes,
            "b",
            [_info("h1", [2, 4])],
            [_info("h2", [2, 1])],
            [numpy_helper.from_array(np.array([1], np.int64), "axes")],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
        ir_version=8,
    )
    parts = [a.SerializeToString(), b.SerializeToString()]
    try:
        merged = merge_models(parts)
    except PackageError:
        return
    np.testing.assert_array_equal(_run(merged, feeds)["h2"], _run_in_sequence(parts, feeds)["h2"])
