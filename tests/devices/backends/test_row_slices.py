"""Wide MatMulNBits matrices split by output rows (devices/backends/row_slices.py): ONNX
Runtime computes the same outputs bit for bit from the slices, for 4-bit weights with zero
points and 8-bit ones without, one row or several; what cannot be split is left as it was."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from devices.backends.row_slices import ROW_ALIGN, row_ranges, split_wide_matmuls
from edge.format import TensorEntry

K, BLOCK = 128, 32
DTYPES = {"uint8": TensorProto.UINT8, "float32": TensorProto.FLOAT}


def _matmul(rows: int, bits: int, zero_points: bool, extra_inputs: int = 0):
    """(model bytes, tensor entries, arrays) of Y = MatMulNBits(X, W) with random weights laid
    out as the exporter writes them: by output row, one after another in one file."""
    rng = np.random.default_rng(bits * 7 + rows)
    blocks = K // BLOCK
    arrays = {
        "w.q": rng.integers(0, 256, (rows, blocks, BLOCK * bits // 8), dtype=np.uint8),
        "w.scales": rng.uniform(0.001, 0.02, rows * blocks).astype(np.float32),
    }
    if zero_points:
        arrays["w.zero_points"] = rng.integers(0, 256, rows * ((blocks + 1) // 2), dtype=np.uint8)
    entries, offset = {}, 0
    for name, array in arrays.items():
        entries[name] = TensorEntry(
            name, str(array.dtype), array.shape, "w.bin", offset, array.nbytes
        )
        offset += array.nbytes
    inputs = ["x", *arrays] + [""] * (3 - len(arrays)) * bool(extra_inputs)
    inputs += ["g_idx"][:extra_inputs]
    node = helper.make_node(
        "MatMulNBits", inputs, ["y"], "head", domain="com.microsoft",
        K=K, N=rows, bits=bits, block_size=BLOCK, accuracy_level=4,
    )  # fmt: skip
    initializers = []  # declared with external data, as a package's graphs are
    for name, entry in entries.items():
        tensor = TensorProto(name=name, data_type=DTYPES[entry.dtype], dims=entry.shape)
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", entry.file),
            ("offset", entry.offset),
            ("length", entry.nbytes),
        ):
            tensor.external_data.add(key=key, value=str(value))
        initializers.append(tensor)
    if extra_inputs:
        g_idx = np.arange(K, dtype=np.int32) // BLOCK
        initializers.append(helper.make_tensor("g_idx", TensorProto.INT32, [K], g_idx))
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "S", K])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "S", rows])],
        initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)]
    )
    return model.SerializeToString(), entries, b"".join(a.tobytes() for a in arrays.values())


def _run(model: bytes, entries: dict[str, TensorEntry], blob: bytes, x: np.ndarray) -> np.ndarray:
    """The model's output with every entry handed to ONNX Runtime from `blob`, as the backend
    hands it the package's maps."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.log_severity_level = 3
    arrays = [
        np.frombuffer(
            blob, np.dtype(e.dtype), e.nbytes // np.dtype(e.dtype).itemsize, e.offset
        ).reshape(e.shape)
        for e in entries.values()
    ]
    options.add_external_initializers(
        list(entries), [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
    )
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize(("bits", "zero_points"), [(4, True), (8, False)])
@pytest.mark.parametrize("tokens", [1, 5])
def test_slices_compute_the_whole_matrix_bit_for_bit(
    bits: int, zero_points: bool, tokens: int
) -> None:
    rows = 1000  # not a multiple of the row grid: the last slice is shorter
    model, entries, blob = _matmul(rows, bits, zero_points)
    limit = sum(e.nbytes for e in entries.values()) // 4
    split, split_entries = split_wide_matmuls(model, entries, limit)
    graph = onnx.load_from_string(split).graph
    ops = [n.op_type for n in graph.node]
    assert ops == ["MatMulNBits"] * 4 + ["Concat"]
    assert {t.name for t in graph.initializer} == set(split_entries)
    assert not set(entries) & set(split_entries)  # the whole tensors are no longer read
    for entry in split_entries.values():  # each a contiguous range of the same file
        assert entry.file == "w.bin" and entry.offset + entry.nbytes <= len(blob)
    x = np.random.default_rng(tokens).standard_normal((1, tokens, K)).astype(np.float32)
    np.testing.assert_array_equal(
        _run(split, split_entries, blob, x), _run(model, entries, blob, x)
    )


def test_what_cannot_be_split_is_left_as_it_was() -> None:
    model, entries, _ = _matmul(1000, 4, True)
    assert split_wide_matmuls(model, entries, 1 << 30) == (model, entries)  # small enough
    partial = {k: v for k, v in entries.items() if k != "w.scales"}
    assert split_wide_matmuls(model, partial, 1024) == (model, partial)  # weights not handed
    with_g_idx, entries_g, _ = _matmul(1000, 4, True, extra_inputs=1)
    assert split_wide_matmuls(with_g_idx, entries_g, 1024) == (with_g_idx, entries_g)


def test_row_ranges_start_on_the_row_grid_and_cover_every_row() -> None:
    for rows, nbytes, limit in [(151936, 153 << 20, 32 << 20), (1000, 100, 10), (64, 10, 1)]:
        ranges = row_ranges(rows, nbytes, limit)
        assert ranges[0][0] == 0 and ranges[-1][1] == rows
        assert all(a % ROW_ALIGN == 0 and a < b for a, b in ranges)
        assert all(b == c for (_, b), (c, _) in pairwise(ranges))
    assert len(row_ranges(151936, 153 << 20, 32 << 20)) == 5
