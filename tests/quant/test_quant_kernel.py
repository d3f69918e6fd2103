"""The packed weights run on ONNX Runtime's real `com.microsoft.MatMulNBits` CPU kernel and give
`x @ dequantize(q)`: exactly (fp32 rounding) at accuracy_level 0, within the int8-activation
bound at accuracy_level 4."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort
import pytest

from quant import (
    QuantizedWeight,
    WeightQuantConfig,
    dequantize,
    matmul_nbits_model,
    matmul_nbits_node,
    max_relative_error,
    quantize,
)
from quant.blockwise import pack_codes

EXACT = 1e-4  # fp32 accumulation-order noise, relative to max |y|


def run_kernel(q: QuantizedWeight, x: np.ndarray, accuracy_level: int) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    model = matmul_nbits_model(q, accuracy_level).SerializeToString()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def int8_activation_bound(x: np.ndarray, deq: np.ndarray, block_size: int) -> np.ndarray:
    """Worst case of accuracy_level 4, which rounds x to int8 per block of K (scale amax/127):
    |dy[m, n]| <= sum over blocks b of amax(x[m, b]) / 254 * sum_{k in b} |deq[k, n]|.
    Measured here the error stays under ~0.2 of this bound (errors of random sign cancel)."""
    M, K = x.shape
    nb = -(-K // block_size)
    padded = np.pad(np.abs(x), ((0, 0), (0, nb * block_size - K)))
    amax = padded.reshape(M, nb, block_size).max(axis=-1)  # [M, nb]
    per_k = np.repeat(amax, block_size, axis=1)[:, :K] / 254.0  # [M, K]
    return per_k @ np.abs(deq) + EXACT * 1e-2


def inputs(K: int, M: int = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)) * rng.uniform(0.1, 4.0, K)).astype(np.float32)


@pytest.mark.parametrize(("K", "N"), [(100, 37), (576, 192)])
@pytest.mark.parametrize("block_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_kernel_equals_dequantized_matmul(bits, symmetric, block_size, K, N) -> None:
    w = np.random.default_rng(K + N).standard_normal((K, N)).astype(np.float32)
    q = quantize(w, WeightQuantConfig(bits=bits, block_size=block_size, symmetric=symmetric))
    deq = dequantize(q)
    x = inputs(K)
    reference = x.astype(np.float64) @ deq
    assert max_relative_error(run_kernel(q, x, 0), reference) < EXACT
    fast = run_kernel(q, x, 4)
    assert np.all(np.abs(fast - reference) <= int8_activation_bound(x, deq, block_size))
    assert max_relative_error(fast, reference) < 2e-2


@pytest.mark.parametrize("bits", [4, 8])
def test_kernel_default_zero_point_is_half_range(bits: int) -> None:
    """zero_points=None must mean 8 (int4) / 128 (int8): same output as explicit ones."""
    q = quantize(
        np.random.default_rng(1).standard_normal((96, 8)).astype(np.float32),
        WeightQuantConfig(bits=bits, block_size=32),
    )
    explicit = pack_codes(np.full((q.N, q.n_blocks), 2 ** (bits - 1)), bits, pad=8).reshape(-1)
    x = inputs(96, M=1)
    implicit_y = run_kernel(q, x, 0)
    explicit_y = run_kernel(dataclasses.replace(q, zero_points=explicit), x, 0)
    np.testing.assert_array_equal(implicit_y, explicit_y)
    assert max_relative_error(implicit_y, x.astype(np.float64) @ dequantize(q)) < EXACT


def test_node_attributes_and_initializers() -> None:
    q = quantize(np.ones((100, 6), np.float32), WeightQuantConfig(symmetric=False))
    node, initializers = matmul_nbits_node("h", "out", q, "layers.0.q_proj", accuracy_level=4)
    assert node.op_type == "MatMulNBits" and node.domain == "com.microsoft"
    attributes = {a.name: a.i for a in node.attribute}
    assert attributes == {"K": 100, "N": 6, "bits": 4, "block_size": 32, "accuracy_level": 4}
    names = ["layers.0.q_proj_Q4", "layers.0.q_proj_scales", "layers.0.q_proj_zero_points"]
    assert list(node.input) == ["h", *names]
    assert [t.name for t in initializers] == names
    assert list(initializers[0].dims) == [6, 4, 16]
    node0, _ = matmul_nbits_node("h", "out", q, "w", accuracy_level=0)
    assert "accuracy_level" not in {a.name for a in node0.attribute}
    symmetric = quantize(np.ones((64, 2), np.float32), WeightQuantConfig())
    assert len(matmul_nbits_node("h", "o", symmetric, "w")[1]) == 2
