"""The sliding window (TPI-LLM): which streamed units are resident, which to read, which to drop.

Pure policy, no I/O or threads. Units run in a fixed `order` every step (a decode token or a
prefill chunk), then the order starts again: after the last block comes block 0 of the next
step. Pinned units stay resident and are not the window's business. Of the rest, `window`
consecutive units (cyclically) are resident: the one running and the ones read ahead. When a
unit finishes it is evicted and the unit `window` places after it is read into its buffer.
With a window as large as the number of streamed units nothing is ever evicted: each unit is
read once and the model ends up fully resident.

>>> policy = WindowPolicy(("embed", "b0", "b1", "b2", "head"), 2, frozenset({"embed", "head"}))
>>> policy.window_at("b2"), policy.evictions_after("b2"), policy.reads_after("b2")
(('b2', 'b0'), ('b2',), ('b1',))
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from edge.errors import BudgetTooSmallError, ConfigError


@dataclass(frozen=True)
class WindowPolicy:
    """`order`: every unit of a step in execution order; `window`: streamed units resident at
    once (>= 1); `pinned`: units always resident, never streamed."""

    order: tuple[str, ...]
    window: int
    pinned: frozenset[str] = frozenset()
    _streamed: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _position: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", tuple(self.order))
        object.__setattr__(self, "pinned", frozenset(self.pinned))
        if not self.order or not all(isinstance(n, str) and n for n in self.order):
            raise ConfigError(
                f"WindowPolicy.order must be non-empty unit names, got {self.order!r}"
            )
        repeated = sorted({n for n in self.order if self.order.count(n) > 1})
        if repeated:
            raise ConfigError(f"WindowPolicy.order lists {repeated} more than once")
        unknown = sorted(self.pinned - set(self.order))
        if unknown:
            raise ConfigError(f"pinned units {unknown} are not in the order {list(self.order)}")
        streamed = tuple(n for n in self.order if n not in self.pinned)
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(f"WindowPolicy.window must be an int >= 1, got {self.window!r}")
        if streamed and self.window > len(streamed):
            raise ConfigError(
                f"window {self.window} exceeds the {len(streamed)} streamed units; "
                f"use window={len(streamed)} (all resident) or pin them"
            )
        object.__setattr__(self, "_streamed", streamed)
        object.__setattr__(self, "_position", {n: i for i, n in enumerate(self.order)})

    @property
    def streamed(self) -> tuple[str, ...]:
        """The units the window streams, in execution order."""
        return self._streamed

    @property
    def keeps_all(self) -> bool:
        """True when the window holds every streamed unit: read once, never evicted."""
        return self.window >= len(self._streamed)

    def _index(self, unit: str) -> int:
        try:
            return self._position[unit]
        except KeyError:
            raise ConfigError(f"unit {unit!r} is not in the order {list(self.order)}") from None

    def next_streamed(self, unit: str) -> str | None:
        """The first streamed unit at or after `unit`, cyclically (None if nothing streams)."""
        start = self._index(unit)
        for step in range(len(self.order)):
            name = self.order[(start + step) % len(self.order)]
            if name not in self.pinned:
                return name
        return None

    def window_at(self, unit: str) -> tuple[str, ...]:
        """The streamed units resident while `unit` runs, the running one first."""
        first = self.next_streamed(unit)
        if first is None:
            return ()
        start = self._streamed.index(first)
        n = len(self._streamed)
        return tuple(self._streamed[(start + i) % n] for i in range(self.window))

    def resident(self, unit: str) -> frozenset[str]:
        """Everything resident while `unit` runs: the pinned units and the window."""
        return self.pinned | frozenset(self.window_at(unit))

    def evictions_after(self, unit: str) -> tuple[str, ...]:
        """What to drop once `unit` has run: itself, if streamed, unless the window keeps all."""
        self._index(unit)
        if unit in self.pinned or self.keeps_all:
            return ()
        return (unit,)

    def reads_after(self, unit: str) -> tuple[str, ...]:
        """What to read once `unit` has run: the unit entering the window in its place."""
        if not self.evictions_after(unit):
            return ()
        i = self._streamed.index(unit)
        return (self._streamed[(i + self.window) % len(self._streamed)],)

    def initial_reads(self) -> tuple[str, ...]:
        """What to read before the first unit of the first step runs."""
        return self._streamed[: self.window]

    def read_sequence(self) -> Iterator[str]:
        """Every read, in order, for as many steps as the caller runs: the first window, then
        one unit per unit run; finite (one pass) when the window keeps everything."""
        if self.keeps_all:
            return iter(self._streamed)
        return itertools.cycle(self._streamed)


def window_size(window_bytes: int, unit_bytes: Iterable[int] | Mapping[str, int]) -> int:
    """How many units a window of `window_bytes` holds when every buffer is as large as the
    largest unit (buffers are reused by whichever unit comes next), capped at the count.

    Raises `BudgetTooSmallError` when not even the largest unit fits.
    """
    sizes = list(unit_bytes.values() if isinstance(unit_bytes, Mapping) else unit_bytes)
    if not sizes:
        return 0
    if any(s < 0 for s in sizes) or window_bytes < 0:
        raise ConfigError(f"sizes must be >= 0 bytes, got window {window_bytes}, units {sizes}")
    largest = max(sizes)
    if largest == 0:
        return len(sizes)
    if window_bytes < largest:
        raise BudgetTooSmallError(
            f"a window of {window_bytes} bytes holds no streamed unit: the largest needs "
            f"{largest} bytes",
            budget=window_bytes,
            minimum=largest,
        )
    return min(window_bytes // largest, len(sizes))
