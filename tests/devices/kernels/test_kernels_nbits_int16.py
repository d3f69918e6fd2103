"""`NBitsMatMul(activations="int16")`: x rounded per block to 15-bit integers and multiplied with
AVX-512 VNNI int8 dot products. Its result is x_rounded @ dequantize(W) up to fp32 rounding, so it
stays within the rounding bound of x from numpy's x @ dequantize(W); the x layout it builds is
checked byte for byte against a numpy model of the contract."""

from __future__ import annotations

import numpy as np
import pytest

from devices.kernels import NBitsMatMul, NBitsSpec, host_target, int16_supported
from devices.kernels.nbits_activations import INT16_LEVELS
from edge.errors import ConfigError
from quant import QuantizedWeight, WeightQuantConfig, dequantize, quantize

pytestmark = pytest.mark.skipif(not int16_supported(), reason="needs AVX-512 VNNI")

FP32_TOL = 1e-5  # as for the fp32 kernel: times sum_k |x[m, k] * w[k, n]|
ZERO_POINTS = {
    "none": {"symmetric": True},
    "uint8": {"symmetric": False},
}


def make_weight(bits: int, block_size: int, zp: str, K: int, N: int = 37) -> QuantizedWeight:
    w = np.random.default_rng(K + N).standard_normal((K, N)).astype(np.float32)
    return quantize(w, WeightQuantConfig(bits=bits, block_size=block_size, **ZERO_POINTS[zp]))


def activations(M: int, K: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)) * rng.uniform(0.1, 4.0, K)).astype(np.float32)


def rounding_bound(x: np.ndarray, deq: np.ndarray, block_size: int) -> np.ndarray:
    """|y - x @ W| <= sum_b (max_b |x| / (2 * 16256)) * sum_(k in b) |w[k]| + the fp32 term:
    each x moves by at most half a step of its block's grid."""
    M, K = x.shape
    nb = -(-K // block_size)
    padded = np.pad(np.abs(x), ((0, 0), (0, nb * block_size - K)))
    step = padded.reshape(M, nb, block_size).max(axis=2) / INT16_LEVELS  # [M, nb]
    per_k = np.repeat(step / 2, block_size, axis=1)[:, :K]
    return per_k @ np.abs(deq) + FP32_TOL * (np.abs(x) @ np.abs(deq))


# Each width with every block size and every zero-point kind (the zero-point term is shared with
# the fp32 kernel, tested there in full); K=600 leaves a partial 64-byte step at the end of each
# row for blocks under 128.
LAYOUTS = [
    (4, 16, "none"),
    (4, 32, "uint8"),
    (4, 64, "none"),
    (4, 128, "uint8"),
    (4, 256, "none"),
    (8, 16, "uint8"),
    (8, 32, "none"),
    (8, 64, "uint8"),
    (8, 128, "none"),
    (8, 256, "uint8"),
]


@pytest.mark.parametrize(("bits", "block_size", "zp"), LAYOUTS)
def test_int16_matches_numpy_within_the_rounding_of_x(bits: int, block_size: int, zp: str) -> None:
    q = make_weight(bits, block_size, zp, K=600)
    deq = dequantize(q).astype(np.float64)
    kernel = NBitsMatMul(NBitsSpec.of(q), threads=2, activations="int16", min_bytes_per_thread=0)
    assert kernel.layout.activations == "int16"
    for M in (1, 5, 11):
        x = activations(M, q.K)
        y = kernel(x, q.packed, q.scales, q.zero_points)
        error = np.abs(y - x.astype(np.float64) @ deq)
        assert np.all(error <= rounding_bound(x, deq, block_size))


def reference_layout(x: np.ndarray, bits: int, block_size: int):
    """The int16 layout contract in numpy: parts [M, steps * parts * 64] int8, lane scales
    [M, steps * 16], per-block sums of the rounded x [M, n_blocks]."""
    M, K = x.shape
    nb = -(-K // block_size)
    group = 128 if bits == 4 else 64
    steps = -(-nb * block_size // group)
    padded = np.zeros((M, steps * group), np.float32)
    padded[:, :K] = x
    blocks = padded[:, : nb * block_size].reshape(M, nb, block_size)
    amax = np.abs(blocks).max(axis=2)
    scale = (amax * np.float32(1 / INT16_LEVELS)).astype(np.float32)
    inverse = np.where(amax > 0, np.float32(INT16_LEVELS) / np.where(amax > 0, amax, 1), 0)
    xq = np.zeros((M, steps * group))
    rounded = np.rint(blocks * inverse[..., None].astype(np.float32))
    xq[:, : nb * block_size] = rounded.reshape(M, -1)
    high = np.floor((xq + 64) / 128)
    low = xq - 128 * high
    halves = []
    for half in (high, low):
        if bits == 4:
            pairs = half.reshape(M, steps, 64, 2)
            halves += [pairs[..., 0], pairs[..., 1]]
        else:
            halves.append(half.reshape(M, steps, 64))
    parts = np.stack(halves, axis=2).astype(np.int8).reshape(M, -1)
    lane_block = np.arange(steps * 16) * (group // 16) // block_size
    lanes = np.where(lane_block < nb, scale[:, np.minimum(lane_block, nb - 1)], 0)
    xsum = xq[:, : nb * block_size].reshape(M, nb, block_size).sum(axis=2) * scale
    return parts, lanes, xsum


@pytest.mark.parametrize(("bits", "block_size"), [(4, 16), (4, 256), (8, 32), (8, 128)])
def test_int16_layout_of_x_matches_the_contract(bits: int, block_size: int) -> None:
    x = activations(3, 600, seed=2)
    x[1, 40:200] = 0.0  # whole zero blocks: scale 0, codes 0, no division by zero
    kernel = NBitsMatMul(
        NBitsSpec(K=600, N=16, bits=bits, block_size=block_size), threads=1, activations="int16"
    )
    prepared = kernel._prepare_x(x)
    parts, lanes, xsum = reference_layout(x, bits, block_size)
    # rint of ties may differ by one step between numpy and the CPU's conversion: allow 1
    assert np.abs(prepared.x.astype(int) - parts.astype(int)).max() <= 1
    assert np.mean(prepared.x == parts) > 0.999
    np.testing.assert_allclose(prepared.lane_scales, lanes, rtol=1e-6)
    np.testing.assert_allclose(prepared.xsum, xsum, rtol=1e-5, atol=1e-6)
    assert np.abs(prepared.x).max() <= 127


def test_int16_needs_vnni() -> None:
    with pytest.raises(ConfigError, match="VNNI"):
        NBitsMatMul(NBitsSpec(K=64, N=8), activations="int16", target=host_target(8))
    with pytest.raises(ConfigError, match="activations"):
        NBitsMatMul(NBitsSpec(K=64, N=8), activations="int8")


def test_auto_takes_int16_where_vnni_runs_it() -> None:
    """The default is what the streamed engine gets: int16 here, fp32 on a narrower target."""
    assert NBitsMatMul(NBitsSpec(K=64, N=8)).layout.activations == "int16"
    narrow = NBitsMatMul(NBitsSpec(K=64, N=8), target=host_target(8))
    assert narrow.layout.activations == "fp32"


def test_int16_rows_do_not_depend_on_the_rows_beside_them() -> None:
    """Integer sums per row: a token's output is the same alone (decode) as in a step of 11
    (verification, prefill), bit for bit."""
    q = make_weight(4, 32, "uint8", K=600)
    kernel = NBitsMatMul(NBitsSpec.of(q), threads=2, activations="int16", min_bytes_per_thread=0)
    x = activations(11, q.K)
    together = kernel(x, q.packed, q.scales, q.zero_points)
    for m in range(11):
        alone = kernel(x[m : m + 1], q.packed, q.scales, q.zero_points)
        np.testing.assert_array_equal(alone[0], together[m])


def test_int16_machine_code_uses_vnni_and_no_amx() -> None:
    assembly = NBitsMatMul(NBitsSpec(K=64, N=8), activations="int16").assembly()
    assert "vpdpbusd" in assembly
    for mnemonic in ("ldtilecfg", "tileloadd", "tdpb", "tilestored", "tilezero"):
        assert mnemonic not in assembly
