"""The KV cache's int8 layout (edge/kv_cache.py: `Int8Rows`): llama.cpp's q8_0 cache, a float16
scale per 32 values, indexed like the float buffers the numpy attention reads."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import ConfigError
from edge.kv_cache import INT8_BLOCK, KV_DTYPES, Int8Rows, KVCache


def test_int8_rows_round_each_value_within_half_a_step_of_its_block() -> None:
    rows = Int8Rows((1, 2, 16, 64))
    rng = np.random.default_rng(0)
    written = rng.standard_normal((2, 5, 64)).astype(np.float32) * [[[1.0]], [[30.0]]]
    written[0, 1, :INT8_BLOCK] = 0.0  # an all-zero block stays zero, no division by zero
    rows[0, :, 3:8] = written
    read = rows[0, :, :8]
    assert read.dtype == np.float32 and read.shape == (2, 8, 64)
    assert not read[:, :3].any()  # rows not written read as zeros
    blocks = written.reshape(2, 5, -1, INT8_BLOCK)
    step = np.abs(blocks).max(axis=-1, keepdims=True) / 127
    error = np.abs(read[:, 3:8].reshape(blocks.shape) - blocks)
    assert np.all(error <= step * 0.5 + step * 2e-3)  # half a step, plus the float16 scale
    assert not read[0, 4, :INT8_BLOCK].any()
    assert rows.nbytes == rows.size * KV_DTYPES["int8"]


def test_an_int8_cache_is_a_quarter_of_float32_with_its_scales() -> None:
    from edge.format import ModelSpec

    spec = ModelSpec(
        architecture="llama", vocab_size=100, hidden_size=128, intermediate_size=256,
        num_layers=3, num_heads=2, num_kv_heads=1, head_dim=64, rope_theta=1e4,
        rms_norm_eps=1e-5, max_position_embeddings=64, tie_word_embeddings=False,
    )  # fmt: skip
    full, small = KVCache.allocate(spec, 64), KVCache.allocate(spec, 64, "int8")
    assert small.element_bytes == KV_DTYPES["int8"] == 1.0625
    assert small.nbytes * 4 == full.nbytes * KV_DTYPES["int8"]
    with pytest.raises(ConfigError, match="divisible by 32"):
        Int8Rows((1, 1, 4, 48))
