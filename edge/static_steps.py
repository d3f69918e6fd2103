"""The host's half of a standard-op static package's attention (exporters/arch/standard_ops.py).

Those graphs leave to the host what NPU compilers take worst: index arithmetic and the cache
update. Each step, the engine hands every block an additive mask over the cache's slots and the
step's new keys ([S, C + S]: cached slots before `position` visible, the rest hidden; the new
keys causal) and the rope rows of the step's positions; after the step it writes the keys and
values the blocks output for the step into the KV cache at [position, position + S). Buffers
are allocated once per step length and bound by address, like the engine's own.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np

from edge import format as fmt
from edge.format import ModelSpec
from edge.kv_cache import KVCache

# Additive mask of a hidden key: exp(-30000) is 0 in float32, and it stays finite in float16.
MASKED = -30000.0


class HostAttention:
    """Mask and rope rows in, the step's keys and values out, per fixed step length."""

    def __init__(
        self,
        spec: ModelSpec,
        steps: Sequence[int],
        cache: KVCache,
        rope: tuple[np.ndarray, np.ndarray],
    ) -> None:
        self.cache, self.cos_table, self.sin_table = cache, rope[0], rope[1]
        c, half = cache.max_context, spec.head_dim // 2
        self.masks: dict[int, np.ndarray] = {}
        self.rows: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        # per step length, per layer: [1, H_kv, S, D]
        self.keys: dict[int, list[np.ndarray]] = {}
        self.values: dict[int, list[np.ndarray]] = {}
        for s in steps:
            mask = np.full((s, c + s), MASKED, np.float32)
            mask[:, c:] = np.triu(np.full((s, s), MASKED, np.float32), 1)  # new keys: causal
            self.masks[s] = mask
            self.rows[s] = (np.zeros((s, half), np.float32), np.zeros((s, half), np.float32))
            shape = (1, spec.num_kv_heads, s, spec.head_dim)
            self.keys[s] = [np.zeros(shape, np.float32) for _ in range(spec.num_layers)]
            self.values[s] = [np.zeros(shape, np.float32) for _ in range(spec.num_layers)]

    def bind(
        self, size: int, inputs: Collection[str], outputs: Collection[str]
    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The buffers of a `size`-token step among a segment's `inputs` and `outputs`."""
        cos, sin = self.rows[size]
        given = {fmt.STEP_MASK: self.masks[size], fmt.STEP_COS: cos, fmt.STEP_SIN: sin}
        taken: dict[str, np.ndarray] = {}
        for i, (k, v) in enumerate(zip(self.keys[size], self.values[size], strict=True)):
            taken[fmt.new_key_name(i)], taken[fmt.new_value_name(i)] = k, v
        return (
            {n: a for n, a in given.items() if n in inputs},
            {n: a for n, a in taken.items() if n in outputs},
        )

    def before(self, position: int, size: int) -> None:
        """Fill the step's inputs: cached slots [0, position) visible, the rest hidden."""
        mask = self.masks[size]
        mask[:, :position] = 0.0
        mask[:, position : self.cache.max_context] = MASKED
        cos, sin = self.rows[size]
        cos[...] = self.cos_table[position : position + size]
        sin[...] = self.sin_table[position : position + size]

    def after(self, position: int, size: int) -> None:
        """Write the step's keys and values into the cache (padding included: a later step
        overwrites it, and the mask hides it until then)."""
        end = position + size
        for cache, new in zip(self.cache.keys, self.keys[size], strict=True):
            cache[:, :, position:end] = new
        for cache, new in zip(self.cache.values, self.values[size], strict=True):
            cache[:, :, position:end] = new
