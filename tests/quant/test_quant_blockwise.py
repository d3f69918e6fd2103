"""quantize/dequantize round trips, the packing layout, config validation and metrics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

from quant import (
    QuantizedWeight,
    WeightQuantConfig,
    dequantize,
    max_relative_error,
    quantize,
    relative_error,
    sqnr_db,
)
from quant.blockwise import pack_codes, to_blocks, unpack_codes

SHAPES = [(100, 37), (576, 192)]


def element_scales(q: QuantizedWeight) -> np.ndarray:
    """|scale| of the block each element of the [K, N] weight belongs to."""
    per_block = np.abs(q.scales.reshape(q.N, q.n_blocks))
    return np.repeat(per_block, q.block_size, axis=1)[:, : q.K].T


def weight(shape: tuple[int, int], seed: int = 0) -> np.ndarray:
    """Heavy-tailed weights, so the extreme-value handling is exercised."""
    return np.random.default_rng(seed).standard_t(4, shape).astype(np.float32) * 0.05


# --- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("block_size", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("bits", [4, 8])
def test_rtn_error_is_at_most_half_a_step(bits, symmetric, block_size, shape) -> None:
    w = weight(shape)
    q = quantize(w, WeightQuantConfig(bits=bits, block_size=block_size, symmetric=symmetric))
    deq = dequantize(q)
    assert deq.shape == shape and deq.dtype == np.float32
    bound = element_scales(q) * (0.5 + 1e-5) + 1e-12
    assert np.all(np.abs(w - deq) <= bound)
    assert q.symmetric is symmetric
    nb = -(-shape[0] // block_size)
    assert q.packed.shape == (shape[1], nb, block_size * bits // 8)


@pytest.mark.parametrize("block_size", [16, 256])
def test_extreme_block_sizes_round_trip(block_size: int) -> None:
    w = weight((300, 20), seed=3)
    q = quantize(w, WeightQuantConfig(block_size=block_size, symmetric=False))
    assert np.all(np.abs(w - dequantize(q)) <= element_scales(q) * (0.5 + 1e-5))


def test_more_bits_more_signal() -> None:
    w = weight((576, 192), seed=1)
    db = {b: sqnr_db(w, dequantize(quantize(w, WeightQuantConfig(bits=b)))) for b in (4, 8)}
    assert db[4] > 15 and db[8] > db[4] + 20  # ~6 dB per bit


def test_symmetric_uses_code_zero_for_the_extreme() -> None:
    """Like ORT's packer and GGUF Q4_0: the largest |w| maps to -2**(bits-1), all 16 levels."""
    w = np.linspace(-1.0, 0.5, 32, dtype=np.float32)[:, None]  # one block, extreme -1
    q = quantize(w, WeightQuantConfig(bits=4, block_size=32))
    assert unpack_codes(q.packed, 4)[0, 0, 0] == 0
    assert q.scales[0] == pytest.approx(1 / 8)
    assert dequantize(q)[0, 0] == pytest.approx(-1.0)


def test_zero_and_constant_blocks() -> None:
    w = np.zeros((64, 3), np.float32)
    w[:, 1] = 0.25
    w[:32, 2] = -3.0
    for symmetric in (True, False):
        q = quantize(w, WeightQuantConfig(symmetric=symmetric))
        np.testing.assert_allclose(dequantize(q), w, atol=1e-7)
        assert np.all(np.isfinite(q.scales))


def test_rejects_bad_weights() -> None:
    config = WeightQuantConfig()
    with pytest.raises(ValueError, match="2-D"):
        quantize(np.zeros(8, np.float32), config)
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.full((32, 2), np.nan, np.float32), config)


# --- layout -----------------------------------------------------------------------------------


def test_nibbles_low_first() -> None:
    codes = np.arange(16, dtype=np.uint8)[None]
    packed = pack_codes(codes, 4)
    assert packed[0, 0] == 0x10 and packed[0, 7] == 0xFE
    np.testing.assert_array_equal(unpack_codes(packed, 4), codes)


def test_k_padding_blocks_along_k_per_column() -> None:
    w = weight((100, 5))
    blocks = to_blocks(w, 32)  # [N, 4, 32]
    np.testing.assert_array_equal(blocks[2, 1], w[32:64, 2])
    np.testing.assert_array_equal(blocks[4, 3, :4], w[96:, 4])
    assert not blocks[:, 3, 4:].any()


@pytest.mark.parametrize(("K", "N", "block_size"), [(100, 37, 32), (576, 192, 64), (96, 5, 32)])
@pytest.mark.parametrize("bits", [4, 8])
def test_asymmetric_bytes_equal_orts_own_packer(bits, K, N, block_size) -> None:
    """ORT's MatMulNBitsQuantizer packs with these C++ functions: same B, scales and zero points
    (odd block counts included: ORT pads the last zero-point nibble with 8, and so do we)."""
    w = weight((K, N), seed=K)
    nb, per_byte = -(-K // block_size), 8 // bits
    packed = np.zeros((N, nb, block_size * bits // 8), np.uint8)
    scales = np.zeros((N, nb), np.float32)
    zero_points = np.zeros((N, -(-nb // per_byte)), np.uint8)
    padded = np.pad(w, ((0, nb * block_size - K), (0, 0)))
    pack = quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits
    pack(packed, padded, scales, zero_points, block_size, N, nb * block_size, False)
    q = quantize(w, WeightQuantConfig(bits=bits, block_size=block_size, symmetric=False))
    np.testing.assert_array_equal(q.packed, packed)
    np.testing.assert_array_equal(q.scales, scales.reshape(-1))
    np.testing.assert_array_equal(q.zero_points, zero_points.reshape(-1))


def test_quantized_weight_rejects_wrong_layouts() -> None:
    q = quantize(weight((64, 4)), WeightQuantConfig(symmetric=False))
    fields = dict(
        packed=q.packed,
        scales=q.scales,
        zero_points=q.zero_points,
        K=64,
        N=4,
        bits=4,
        block_size=32,
    )
    with pytest.raises(ValueError, match="packed"):
        QuantizedWeight(**{**fields, "packed": q.packed.reshape(4, -1)})
    with pytest.raises(ValueError, match="scales"):
        QuantizedWeight(**{**fields, "scales": q.scales.astype(np.float16)})
    with pytest.raises(ValueError, match="zero_points"):
        QuantizedWeight(**{**fields, "zero_points": q.zero_points[:-1]})


# --- config -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bits", 3),
        ("bits", True),
        ("block_size", 48),
        ("accuracy_level", 5),
        ("symmetric", 1),
    ],
)
def test_invalid_config_names_field_value_and_allowed(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"WeightQuantConfig.{field}") as info:
        WeightQuantConfig(**{field: value})
    assert repr(value) in str(info.value) and "[" in str(info.value)


def test_config_dict_round_trip() -> None:
    config = WeightQuantConfig(bits=8, block_size=128, symmetric=False, accuracy_level=0)
    assert WeightQuantConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="blocksize"):
        WeightQuantConfig.from_dict({"blocksize": 32})


# --- metrics and imports ----------------------------------------------------------------------


def test_metrics() -> None:
    ref = np.array([3.0, 4.0])
    assert relative_error(ref, ref) == 0 and sqnr_db(ref, ref) == float("inf")
    assert relative_error(np.array([3.0, 4.5]), ref) == pytest.approx(0.1)
    assert max_relative_error(np.array([3.0, 4.5]), ref) == pytest.approx(0.125)
    assert sqnr_db(ref, np.array([3.0, 4.5])) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="shapes"):
        relative_error(ref, ref[:1])


def test_import_needs_no_onnx() -> None:
    """A runtime (a Pi with numpy + onnxruntime only) can import quant and dequantize."""
    code = "import sys, quant; assert 'onnx' not in sys.modules, 'onnx imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_quantized_weight_rejects_bad_bits() -> None:
    q = quantize(weight((64, 4)), WeightQuantConfig())
    with pytest.raises(ValueError, match="bits/block_size"):
        QuantizedWeight(q.packed, q.scales, None, K=64, N=4, bits=2, block_size=32)
