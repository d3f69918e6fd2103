"""Rotary-embedding tables, computed by the runtime from the spec (cheap, and not shipped)."""

from __future__ import annotations

import numpy as np

from edge.format import ModelSpec


def rope_tables(spec: ModelSpec, max_context: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin, each [max_context, head_dim / 2], as Hugging Face's default rope builds them."""
    d = spec.head_dim
    # float32 like transformers, so rounding of the angles matches the reference
    inv_freq = (
        1.0 / (spec.rope_theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
    ).astype(np.float32)
    angles = np.arange(max_context, dtype=np.float32)[:, None] * inv_freq[None, :]
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
