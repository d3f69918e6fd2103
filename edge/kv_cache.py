"""The KV cache: preallocated once per engine and updated in place by the attention op."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.format import ModelSpec

# Element types a KV cache may have, and their bytes.
KV_DTYPES = {"float32": 4, "float16": 2}
# A streamed run's (`StreamConfig`, the planner's streamed plans): under a memory budget the
# cache is what a user gives up context for, and halving it costs keys and values one rounding.
STREAMED_KV_DTYPE = "float16"


@dataclass
class KVCache:
    """Per layer, keys and values as [1, H_kv, max_context, D] buffers: float32, or float16
    where every backend computes attention itself from them (`KV_DTYPES`; the streamed
    backend: half the memory, the context a budget holds doubled).

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
    def allocate(cls, spec: ModelSpec, max_context: int, dtype: str = "float32") -> KVCache:
        if dtype not in KV_DTYPES:
            raise ValueError(f"KV cache dtype {dtype!r}; one of {list(KV_DTYPES)}")
        shape = (1, spec.num_kv_heads, max_context, spec.head_dim)
        return cls(
            [np.zeros(shape, dtype) for _ in range(spec.num_layers)],
            [np.zeros(shape, dtype) for _ in range(spec.num_layers)],
            max_context,
        )

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values))

    def rewind(self, position: int) -> None:
        if not 0 <= position <= self.position:
            raise ValueError(f"cannot rewind the KV cache to {position}; it holds {self.position}")
        self.position = position

    def save(self, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Copies of every layer's keys and values of the first `n` positions."""
        if not 0 <= n <= self.position:
            raise ValueError(f"cannot save {n} positions of the KV cache; it holds {self.position}")
        return (
            [k[:, :, :n].copy() for k in self.keys],
            [v[:, :, :n].copy() for v in self.values],
        )

    def restore(self, keys: Sequence[np.ndarray], values: Sequence[np.ndarray]) -> None:
        """Copy saved keys/values back in place (the buffers stay bound) and hold only them."""
        n = keys[0].shape[2] if keys else 0
        if len(keys) != len(self.keys) or len(values) != len(self.values) or n > self.max_context:
            raise ValueError("the snapshot does not fit this KV cache (another model?)")
        for cache, saved in zip(self.keys, keys):
            cache[:, :, :n] = saved
        for cache, saved in zip(self.values, values):
            cache[:, :, :n] = saved
        self.position = n


@dataclass(frozen=True, eq=False)
class KVSnapshot:
    """A copy of the first `length` positions of an engine's KV cache and the tokens they hold,
    so a conversation's prefix survives another one running in between (`Engine.save_prefix`,
    `Engine.restore_prefix`). Keys/values per layer: [1, H_kv, length, D] float32."""

    tokens: np.ndarray  # int64 [length]
    keys: list[np.ndarray]
    values: list[np.ndarray]

    @property
    def length(self) -> int:
        return len(self.tokens)

    @property
    def nbytes(self) -> int:
        return self.tokens.nbytes + sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values))
