"""The host's half of standard-op static attention: the step's mask and rope rows in, the
step's keys and values written into the cache after it."""

from __future__ import annotations

import numpy as np

from edge import format as fmt
from edge.format import ModelSpec
from edge.kv_cache import KVCache
from edge.rope import rope_tables
from edge.static_steps import MASKED, HostAttention

SPEC = ModelSpec(
    architecture="llama",
    vocab_size=100,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=64,
    tie_word_embeddings=True,
)


def test_mask_rope_rows_and_cache_writes_follow_the_position() -> None:
    """At position 5 a 3-token step sees cached slots 0..4 and, of its own keys, those up to
    itself; its rope rows are the table's rows 5..7; its keys land in slots 5..7 of every
    layer, values likewise, and nothing else in the cache changes."""
    cache = KVCache.allocate(SPEC, 16)
    rope = rope_tables(SPEC, 16)
    host = HostAttention(SPEC, (1, 3), cache, rope)
    inputs, outputs = host.bind(3, {fmt.STEP_MASK, fmt.STEP_COS, "hidden.0"}, {"new_key.1"})
    assert set(inputs) == {fmt.STEP_MASK, fmt.STEP_COS} and set(outputs) == {"new_key.1"}
    host.before(5, 3)
    mask = host.masks[3]  # [3, 16 + 3]
    assert (mask[:, :5] == 0).all() and (mask[:, 5:16] == MASKED).all()
    np.testing.assert_array_equal(mask[:, 16:] == 0, np.tril(np.ones((3, 3), bool)))
    np.testing.assert_array_equal(host.rows[3][0], rope[0][5:8])
    np.testing.assert_array_equal(host.rows[3][1], rope[1][5:8])
    for layer in range(SPEC.num_layers):
        host.keys[3][layer][...] = layer + 1
        host.values[3][layer][...] = -(layer + 1)
    host.after(5, 3)
    for layer in range(SPEC.num_layers):
        assert (cache.keys[layer][:, :, 5:8] == layer + 1).all()
        assert (cache.values[layer][:, :, 5:8] == -(layer + 1)).all()
        assert not cache.keys[layer][:, :, :5].any() and not cache.keys[layer][:, :, 8:].any()
    host.before(6, 1)  # the next step (one token) sees one more cached slot
    assert (host.masks[1][:, :6] == 0).all() and (host.masks[1][:, 6:16] == MASKED).all()
