"""`NBitsMatMul` computes x @ dequantize(W) for every `MatMulNBits` layout (int4/int8, every block
size, no or uint8 zero points, K not a multiple of the block) and agrees with numpy and
with ONNX Runtime's own `MatMulNBits` at accuracy_level 0 (fp32) within fp32 rounding."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from devices.kernels import (
    KernelInputError,
    NBitsMatMul,
    NBitsSpec,
    host_target,
    zero_point_kind,
)
from devices.kernels.nbits_matmul import _row_bounds
from edge.errors import ConfigError
from quant import QuantizedWeight, WeightQuantConfig, dequantize, matmul_nbits_model, quantize

# fp32 rounding bound: |y - exact| <= TOL * sum_k |x[m, k] * w[k, n]|. Summing K <= 512 fp32
# products in any order errs by far less (~sqrt(K) * 6e-8 typically); one misread code would
# move y by ~1/K of that sum, i.e. 1e-3 or more, so bugs cannot hide under it.
TOL = 1e-5
ZERO_POINTS = {  # kind -> quantization config making it
    "none": {"symmetric": True},
    "uint8": {"symmetric": False},
}


def make_weight(
    bits: int, block_size: int, zp: str, K: int, N: int = 37, seed: int = 0
) -> QuantizedWeight:
    w = np.random.default_rng(seed).standard_normal((K, N)).astype(np.float32)
    q = quantize(w, WeightQuantConfig(bits=bits, block_size=block_size, **ZERO_POINTS[zp]))
    assert zero_point_kind(q.zero_points) == zp
    return q


def activations(M: int, K: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((M, K)) * rng.uniform(0.1, 4.0, K)).astype(np.float32)


def assert_close(y: np.ndarray, x: np.ndarray, deq: np.ndarray, factor: float = 1.0) -> None:
    exact = x.astype(np.float64) @ deq.astype(np.float64)
    bound = TOL * factor * (np.abs(x).astype(np.float64) @ np.abs(deq).astype(np.float64))
    assert y.shape == exact.shape and y.dtype == np.float32
    worst = np.max(np.abs(y - exact) - bound)
    assert worst <= 0, f"error exceeds the fp32 bound by {worst}"


def ort_matmul_nbits(q: QuantizedWeight, x: np.ndarray) -> np.ndarray:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    model = matmul_nbits_model(q, accuracy_level=0).SerializeToString()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


@pytest.mark.parametrize("zp", list(ZERO_POINTS))
@pytest.mark.parametrize("block_size", [16, 32, 64, 128, 256])
@pytest.mark.parametrize("bits", [4, 8])
def test_matches_numpy_and_onnxruntime(bits: int, block_size: int, zp: str) -> None:
    # K=600: the last block is zero-padded for every size; 38 to 3 blocks per row, so the
    # zero-point sums run both their vector loop and their scalar tail
    q = make_weight(bits, block_size, zp, K=600)
    deq = dequantize(q)
    for threads in (1, 2):
        kernel = NBitsMatMul(
            NBitsSpec.of(q), threads=threads, activations="fp32", min_bytes_per_thread=0
        )
        for M in (1, 5):
            x = activations(M, q.K)
            y = kernel(x, q.packed, q.scales, q.zero_points)
            assert_close(y, x, deq)
            if threads == 1:
                ours_vs_ort = ort_matmul_nbits(q, x)
                assert_close(ours_vs_ort, x, deq)
                np.testing.assert_allclose(
                    y, ours_vs_ort, rtol=0, atol=float(2 * TOL * np.max(np.abs(x) @ np.abs(deq)))
                )


@pytest.mark.parametrize(("bits", "zp"), [(4, "none"), (8, "uint8")])
def test_whole_blocks_and_every_tile_shape(bits: int, zp: str) -> None:
    """K a multiple of the block, M = 11 and 15 (tiles of 8, 4, 2 and 1 rows of x; 4 and 2 on
    16-register CPUs), N = 70 (groups of 4 output rows plus a tail of 2)."""
    q = make_weight(bits, 32, zp, K=512, N=70, seed=3)
    kernel = NBitsMatMul(NBitsSpec.of(q), threads=2, activations="fp32", min_bytes_per_thread=0)
    for M in (11, 15):
        x = activations(M, 512)
        assert_close(kernel(x, q.packed, q.scales, q.zero_points), x, dequantize(q))


@pytest.mark.parametrize("lanes", [8, 4])
@pytest.mark.parametrize(
    ("bits", "block_size", "zp"),
    [(4, 16, "uint8"), (4, 32, "none"), (4, 64, "uint8"), (8, 32, "uint8")],
)
def test_narrow_vector_targets(lanes: int, bits: int, block_size: int, zp: str) -> None:
    """The 8-lane (AVX2) and 4-lane (SSE, as on NEON) code paths, compiled for this CPU with
    the wider extensions switched off."""
    target = host_target(lanes)
    if target.lanes < lanes:  # NEON holds 4 float lanes: there is no 8-lane path to test
        pytest.skip(f"this CPU's vectors hold {target.lanes} float lanes, not {lanes}")
    assert target.lanes == lanes and "+avx512f" not in target.features.split(",")
    q = make_weight(bits, block_size, zp, K=300, N=45, seed=lanes)
    kernel = NBitsMatMul(
        NBitsSpec.of(q), threads=2, activations="fp32", target=target, min_bytes_per_thread=0
    )
    assert kernel.layout.lanes <= lanes and not kernel.layout.permute
    for M in (1, 5):
        x = activations(M, q.K)
        assert_close(kernel(x, q.packed, q.scales, q.zero_points), x, dequantize(q))


def test_reads_flat_window_buffers_in_place_and_writes_out() -> None:
    """Weights as 1-D views of one read-only byte buffer (a streaming window) work as is."""
    q = make_weight(4, 32, "uint8", K=128, N=40)
    window = np.frombuffer(
        q.packed.tobytes() + q.scales.tobytes() + q.zero_points.tobytes(), np.uint8
    )
    packed = window[: q.packed.nbytes]
    scales = window[q.packed.nbytes : q.packed.nbytes + q.scales.nbytes].view(np.float32)
    zero_points = window[q.packed.nbytes + q.scales.nbytes :]
    x = activations(3, q.K)
    out = np.full((3, q.N), np.nan, np.float32)
    result = NBitsMatMul(NBitsSpec.of(q), threads=1, activations="fp32")(
        x, packed, scales, zero_points, out=out
    )
    assert result is out
    assert_close(out, x, dequantize(q))


def test_row_bounds_cover_every_row_once() -> None:
    for N in (1, 5, 16, 37, 8192):
        for threads in (1, 2, 3):
            bounds = _row_bounds(N, threads)
            assert bounds[0] == 0 and bounds[-1] == N and bounds == sorted(bounds)
            assert all(b % 16 == 0 for b in bounds[1:-1])


def test_machine_code_has_no_amx() -> None:
    """AMX dies with SIGILL on these VMs (ANCHORS): the target never enables it, and the
    compiled kernels hold no tile instruction."""
    target = host_target()
    assert not any(f.startswith("+amx") for f in target.features.split(","))
    for bits in (4, 8):
        assembly = NBitsMatMul(
            NBitsSpec(K=64, N=8, bits=bits, zero_points="uint8"), activations="fp32"
        ).assembly()
        assert "nbits_gemm" in assembly
        for mnemonic in ("ldtilecfg", "tileloadd", "tdpb", "tilestored", "tilezero"):
            assert mnemonic not in assembly


@pytest.fixture(scope="module")
def int4() -> tuple[QuantizedWeight, NBitsMatMul]:
    q = make_weight(4, 32, "none", K=64, N=8)
    return q, NBitsMatMul(NBitsSpec.of(q), threads=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x": np.zeros((2, 64), np.float64)}, "x must be a float32"),
        ({"x": np.zeros((2, 63), np.float32)}, "x must be a float32"),
        ({"x": np.zeros((0, 64), np.float32)}, "at least one row"),
        ({"x": np.zeros(64, np.float32)}, "x must be a float32"),
        ({"packed": np.zeros((8, 2, 15), np.uint8)}, "packed must be"),
        ({"packed": np.zeros((8, 2, 32), np.uint8)[:, :, ::2]}, "not C-contiguous"),
        ({"packed": np.zeros((8, 2, 16), np.int8)}, "packed must be"),
        ({"scales": np.zeros(16, np.float64)}, "scales must be"),
        ({"scales": np.zeros(15, np.float32)}, "scales must be"),
        ({"zero_points": np.zeros(8, np.uint8)}, "must be None"),
        ({"out": np.zeros((2, 9), np.float32)}, "out must be"),
        ({"out": np.zeros((2, 8), np.float64)}, "out must be"),
    ],
)
def test_bad_inputs_raise_clear_errors(int4, change: dict, message: str) -> None:
    q, kernel = int4
    call = {
        "x": np.zeros((2, 64), np.float32),
        "packed": q.packed,
        "scales": q.scales,
        "zero_points": None,
        "out": None,
        **change,
    }
    with pytest.raises(KernelInputError, match=message):
        kernel(**call)


def test_missing_zero_points_raise() -> None:
    q = make_weight(8, 32, "uint8", K=64, N=8)
    kernel = NBitsMatMul(NBitsSpec.of(q), threads=1)
    with pytest.raises(KernelInputError, match="zero_points is None"):
        kernel(np.zeros((1, 64), np.float32), q.packed, q.scales, None)
    with pytest.raises(KernelInputError, match="zero_points must be"):
        kernel(np.zeros((1, 64), np.float32), q.packed, q.scales, q.zero_points[:-1])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"K": 0}, "NBitsSpec.K"),
        ({"N": 2.5}, "NBitsSpec.N"),
        ({"bits": 3}, "NBitsSpec.bits"),
        ({"block_size": 48}, "NBitsSpec.block_size"),
        ({"zero_points": "int8"}, "NBitsSpec.zero_points"),
    ],
)
def test_bad_spec_raises(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        NBitsSpec(**{"K": 64, "N": 8, **kwargs})


def test_bad_thread_count_raises() -> None:
    with pytest.raises(ConfigError, match="threads"):
        NBitsMatMul(NBitsSpec(K=64, N=8), threads=0)
