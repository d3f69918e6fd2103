"""Saved KV cache prefixes, so interleaved conversations each keep theirs.

An engine has one KV cache: with two people chatting in turn (A, B, A), B's prompt overwrites
A's cached prefix and A's next turn prefills its whole history again. `KVSlots` keeps copies
(`KVSnapshot`s, edge/kv_cache.py) of prefixes that were about to be overwritten, most recently
saved last, bounded by their count and their bytes; `Model` restores the one sharing the
longest prefix with a new prompt when it beats what the live cache shares.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.kv_cache import KVSnapshot

# A prefix shorter than this is not worth its copy: prefilling it again costs little.
MIN_SLOT_TOKENS = 32
# Without an explicit bound, the slots may take this share of the memory available at load.
SLOT_MEMORY_SHARE = 0.25


def common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    """How many leading tokens two id arrays share."""
    m = min(len(a), len(b))
    differ = np.flatnonzero(a[:m] != b[:m])
    return int(differ[0]) if len(differ) else m


class KVSlots:
    """A least-recently-saved-first list of snapshots: at most `count` of them, together at
    most `max_bytes` (the oldest go first; one larger than `max_bytes` alone is not kept)."""

    def __init__(self, count: int, max_bytes: int) -> None:
        self.count = count
        self.max_bytes = max_bytes
        self._slots: list[KVSnapshot] = []

    def __len__(self) -> int:
        return len(self._slots)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._slots)

    @property
    def snapshots(self) -> tuple[KVSnapshot, ...]:
        """The saved snapshots, oldest first."""
        return tuple(self._slots)

    def best(self, ids: Sequence[int] | np.ndarray) -> tuple[int, int]:
        """(index, shared tokens) of the slot sharing the longest prefix with `ids`;
        (-1, 0) when none shares any."""
        tokens = np.asarray(ids, np.int64)
        index, shared = -1, 0
        for i, snapshot in enumerate(self._slots):
            n = common_prefix(snapshot.tokens, tokens)
            if n > shared:
                index, shared = i, n
        return index, shared

    def take(self, index: int) -> KVSnapshot:
        """Remove and return slot `index` (restored, it becomes the live cache)."""
        return self._slots.pop(index)

    def put(self, snapshot: KVSnapshot) -> bool:
        """Keep `snapshot`, evicting the oldest beyond the bounds; whether it was kept. A slot
        it extends is dropped (whatever matched that one matches it at least as far); if a
        slot already extends it, that one is kept instead."""
        if self.count < 1 or snapshot.nbytes > self.max_bytes:
            return False
        kept = []
        for slot in self._slots:
            shared = common_prefix(slot.tokens, snapshot.tokens)
            if shared == snapshot.length:  # `slot` holds it already, and more: keep it, newer
                self._slots.remove(slot)
                self._slots.append(slot)
                return False
            if shared < slot.length:
                kept.append(slot)
        kept.append(snapshot)
        total = sum(s.nbytes for s in kept)
        while len(kept) > self.count or total > self.max_bytes:
            total -= kept.pop(0).nbytes
        self._slots = kept
        return True

    def clear(self) -> None:
        self._slots.clear()
