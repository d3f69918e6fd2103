"""The KV cache: preallocated once per engine and updated in place by the attention op."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.errors import ConfigError
from edge.format import ModelSpec

# Values per scale of an int8 cache: llama.cpp's q8_0 cache layout (blocks of 32 along the head
# dimension, a float16 scale each).
INT8_BLOCK = 32
# Element types a KV cache may have, and their bytes (int8: its scales included).
KV_DTYPES = {"float32": 4.0, "float16": 2.0, "int8": 1 + 2 / INT8_BLOCK}
# A streamed run's (`StreamConfig`, the planner's streamed plans): under a memory budget the
# cache is what a user gives up context for, and halving it costs keys and values one rounding.
STREAMED_KV_DTYPE = "float16"


class Int8Rows:
    """One layer's keys or values as int8 [1, H_kv, T, D], a float16 scale per INT8_BLOCK
    values along D (symmetric, absmax / 127): 1.0625 bytes an element, a quarter of float32.

    Indexed over the first three axes as the float buffers are (`rows[0, :, a:b] = x` rounds
    `x` in; `rows[0, :, :n]` reads float32 back), so the numpy attention takes either."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        if shape[-1] % INT8_BLOCK:
            raise ConfigError(
                f"an int8 KV cache needs a head size divisible by {INT8_BLOCK}, not {shape[-1]}"
            )
        self.data = np.zeros(shape, np.int8)
        self.scales = np.zeros((*shape[:-1], shape[-1] // INT8_BLOCK), np.float16)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    @property
    def size(self) -> int:
        return self.data.size

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + self.scales.nbytes

    def __getitem__(self, index: tuple) -> np.ndarray:
        data, scales = self.data[_rows_only(index)], self.scales[_rows_only(index)]
        blocks = data.reshape(*scales.shape, INT8_BLOCK).astype(np.float32)
        return (blocks * scales[..., None].astype(np.float32)).reshape(data.shape)

    def __setitem__(self, index: tuple, values: np.ndarray) -> None:
        index = _rows_only(index)
        shape = self.data[index].shape
        blocks = np.asarray(values, np.float32).reshape(*shape[:-1], -1, INT8_BLOCK)
        scales = (np.abs(blocks).max(axis=-1) / 127).astype(np.float16)
        wide = scales.astype(np.float32)[..., None]
        quantized = np.divide(blocks, wide, out=np.zeros_like(blocks), where=wide > 0)
        self.data[index] = np.rint(quantized).clip(-127, 127).astype(np.int8).reshape(shape)
        self.scales[index] = scales


def _rows_only(index: tuple) -> tuple:
    """`index` as long as it selects whole rows (nothing along the last axis)."""
    if not isinstance(index, tuple) or len(index) > 3:
        raise IndexError("an int8 KV cache is indexed over [batch, head, position] only")
    return index


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

    keys: list[np.ndarray]  # or Int8Rows
    values: list[np.ndarray]
    max_context: int
    position: int = 0

    @classmethod
    def allocate(cls, spec: ModelSpec, max_context: int, dtype: str = "float32") -> KVCache:
        if dtype not in KV_DTYPES:
            raise ValueError(f"KV cache dtype {dtype!r}; one of {list(KV_DTYPES)}")
        shape = (1, spec.num_kv_heads, max_context, spec.head_dim)

        def layer() -> np.ndarray:
            return Int8Rows(shape) if dtype == "int8" else np.zeros(shape, dtype)  # type: ignore[return-value]

        return cls(
            [layer() for _ in range(spec.num_layers)],
            [layer() for _ in range(spec.num_layers)],
            max_context,
        )

    @property
    def element_bytes(self) -> float:
        """Bytes a cached key or value element takes (int8: its scales included)."""
        return self.keys[0].nbytes / self.keys[0].size

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
