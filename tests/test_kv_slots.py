"""`KVSlots`, the LRU of saved KV prefixes behind `Model(kv_slots=N)`, on synthetic snapshots:
the longest shared prefix wins, count and byte bounds evict the oldest, and a prefix another
slot extends is not kept twice."""

from __future__ import annotations

import numpy as np

from edge.kv_cache import KVSnapshot
from edge.kv_slots import KVSlots, common_prefix


def snapshot(tokens: list[int]) -> KVSnapshot:
    """Two layers of one head and dimension 2: 16 bytes per token and layer, plus the id."""
    n = len(tokens)
    kv = [np.zeros((1, 1, n, 2), np.float32) for _ in range(2)]
    return KVSnapshot(np.array(tokens, np.int64), kv, [a.copy() for a in kv])


def test_common_prefix() -> None:
    a = np.array([1, 2, 3, 4])
    assert common_prefix(a, np.array([1, 2, 9])) == 2
    assert common_prefix(a, np.array([1, 2])) == 2
    assert common_prefix(a, np.array([], np.int64)) == 0


def test_best_is_the_longest_shared_prefix_and_take_removes_it() -> None:
    slots = KVSlots(4, 1 << 20)
    for tokens in ([1, 2, 3], [1, 2, 7, 8, 9], [5, 6]):
        assert slots.put(snapshot(tokens))
    assert slots.best([1, 2, 7, 8]) == (1, 4)
    assert slots.best([4]) == (-1, 0)
    assert list(slots.take(1).tokens) == [1, 2, 7, 8, 9]
    assert len(slots) == 2


def test_count_and_bytes_evict_the_oldest() -> None:
    slots = KVSlots(2, 1 << 20)
    for first in (1, 2, 3):
        slots.put(snapshot([first, 0, 0]))
    assert [int(s.tokens[0]) for s in slots.snapshots] == [2, 3]
    one = snapshot([9, 9, 9]).nbytes
    slots.max_bytes = one
    assert slots.put(snapshot([4, 0, 0]))
    assert [int(s.tokens[0]) for s in slots.snapshots] == [4] and slots.nbytes == one
    assert not slots.put(snapshot([5, 0, 0, 0]))  # larger than the bound alone: not kept
    assert [int(s.tokens[0]) for s in slots.snapshots] == [4]
    assert not KVSlots(0, 1 << 20).put(snapshot([1]))


def test_a_prefix_is_kept_once() -> None:
    slots = KVSlots(4, 1 << 20)
    slots.put(snapshot([1, 2]))
    slots.put(snapshot([7]))
    assert slots.put(snapshot([1, 2, 3]))  # extends [1, 2], which goes
    assert [list(s.tokens) for s in slots.snapshots] == [[7], [1, 2, 3]]
    assert not slots.put(snapshot([7]))  # already held: that slot becomes the newest
    assert [list(s.tokens) for s in slots.snapshots] == [[1, 2, 3], [7]]
