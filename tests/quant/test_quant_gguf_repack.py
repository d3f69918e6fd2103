"""GGUF Q4_0/Q8_0 blocks repack into MatMulNBits without re-quantizing: bit-exact against
`gguf.quants.dequantize`, and the real kernel computes x @ that matrix."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import onnxruntime as ort
import pytest
from gguf import GGMLQuantizationType as T

from quant import (
    QuantizedWeight,
    dequantize,
    is_lossless,
    matmul_nbits_model,
    max_relative_error,
    repack_gguf,
    repack_q4_0,
    repack_q8_0,
)

TYPES = [T.Q4_0, T.Q8_0]


def run_kernel(q: QuantizedWeight, x: np.ndarray, accuracy_level: int) -> np.ndarray:
    model = matmul_nbits_model(q, accuracy_level).SerializeToString()
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def assert_bit_exact(q: QuantizedWeight, raw: np.ndarray, qtype: T) -> None:
    reference = gguf.quants.dequantize(raw, qtype)  # [N, K], rows = output features
    ours = dequantize(q)  # [K, N]
    assert ours.shape == reference.T.shape
    np.testing.assert_array_equal(
        ours.view(np.uint32), reference.T.astype(np.float32).view(np.uint32)
    )


def random_raw(qtype: T, N: int, K: int, seed: int = 0) -> np.ndarray:
    """Arbitrary valid blocks: every code (Q8_0's -128 too), negative and tiny fp16 scales."""
    rng = np.random.default_rng(seed)
    block_bytes = 18 if qtype == T.Q4_0 else 34
    raw = rng.integers(0, 256, (N, K // 32, block_bytes), dtype=np.uint8)
    d = rng.standard_normal((N, K // 32)) * 10.0 ** rng.integers(-6, 2, (N, K // 32))
    raw[..., :2] = d.astype(np.float16)[..., None].view(np.uint8)
    return raw.reshape(N, -1)


@pytest.mark.parametrize(("N", "K"), [(192, 576), (37, 96), (1, 32)])
@pytest.mark.parametrize("qtype", TYPES)
def test_repack_of_gguf_quantized_is_bit_exact(qtype: T, N: int, K: int) -> None:
    w = np.random.default_rng(N).standard_t(4, (N, K)).astype(np.float32)
    raw = gguf.quants.quantize(w, qtype)  # [N, K/32 * block_bytes]
    q = repack_gguf(raw, qtype, (N, K))
    assert (q.K, q.N, q.block_size, q.zero_points) == (K, N, 32, None)
    assert_bit_exact(q, raw, qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_repack_of_arbitrary_blocks_is_bit_exact(qtype: T) -> None:
    raw = random_raw(qtype, 64, 256)
    assert_bit_exact(repack_gguf(raw, qtype.name, (64, 256)), raw, qtype)


@pytest.mark.parametrize("qtype", TYPES)
def test_kernel_on_repacked_equals_gguf_matmul(qtype: T) -> None:
    N, K = 192, 576
    w = np.random.default_rng(7).standard_normal((N, K)).astype(np.float32)
    raw = gguf.quants.quantize(w, qtype)
    q = repack_gguf(raw, qtype, (N, K))
    x = np.random.default_rng(8).standard_normal((4, K)).astype(np.float32)
    reference = x.astype(np.float64) @ gguf.quants.dequantize(raw, qtype).T  # x @ W.T
    assert max_relative_error(run_kernel(q, x, 0), reference) < 1e-4
    assert max_relative_error(run_kernel(q, x, 4), reference) < 2e-2


def test_repack_rejects_bad_input() -> None:
    raw = gguf.quants.quantize(np.ones((2, 64), np.float32), T.Q4_0)
    with pytest.raises(ValueError, match="Q4_1"):
        repack_gguf(raw, T.Q4_1, (2, 64))
    with pytest.raises(ValueError, match="must be 72 uint8 bytes"):
        repack_q4_0(raw[:, :-1], (2, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        repack_q8_0(np.zeros(34, np.uint8), (1, 31))
    q = repack_q4_0(raw.tobytes(), (2, 64))  # plain bytes work too
    assert q.packed.shape == (2, 2, 16)
    assert is_lossless(T.Q8_0) and is_lossless("Q4_0") and not is_lossless(T.Q4_K)


@pytest.mark.network
def test_real_smollm2_q8_0_embedding_repacks_bit_exact(smollm2_gguf: Path) -> None:
    """SmolLM2's token embedding (the tied output head) ships as Q8_0 [49152, 576]."""
    reader = gguf.GGUFReader(smollm2_gguf)
    tensor = next(t for t in reader.tensors if t.name == "token_embd.weight")
    assert tensor.tensor_type == T.Q8_0
    raw = np.asarray(tensor.data)[:2048]  # rows = vocabulary entries
    q = repack_gguf(raw, tensor.tensor_type, (2048, int(tensor.shape[0])))
    assert_bit_exact(q, raw, T.Q8_0)
