"""The KV cache: preallocated once per engine and updated in place by the attention op."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.format import ModelSpec


@dataclass
class KVCache:
    """Per layer, keys and values as [1, H_kv, max_context, D] float32 buffers.

    The graphs' attention writes the new step's keys/values at positions [position, position+S)
    of these same buffers (input and output are bound to one address), so nothing is copied per
    token. `position` is how many tokens the cache holds; rewinding it (speculative decoding)
    simply lets later steps overwrite the stale tail.
    """

    keys: list[np.ndarray]
    values: list[np.ndarray]
    max_context: int
    position: int = 0

    @classmethod
    def allocate(cls, spec: ModelSpec, max_context: int) -> KVCache:
        shape = (1, spec.num_kv_heads, max_context, spec.head_dim)
        return cls(
            [np.zeros(shape, np.float32) for _ in range(spec.num_layers)],
            [np.zeros(shape, np.float32) for _ in range(spec.num_layers)],
            max_context,
        )

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values))

    def rewind(self, position: int) -> None:
        if not 0 <= position <= self.position:
            raise ValueError(f"cannot rewind the KV cache to {position}; it holds {self.position}")
        self.position = position
