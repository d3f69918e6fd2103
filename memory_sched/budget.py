"""Memory budgets: parse a user's size ("300MB", "1.5GiB", "25%") and split it.

The budget is what the whole process may spend on the model. Pinned parts, the KV cache,
activations and the runtime itself come off the top; what is left is the streaming window,
which must hold at least one streamed unit (the largest), or nothing can run at all.

>>> parse_size("1.5GiB")
1610612736
>>> window_bytes(MemoryBudget(1 << 30), pinned=0, kv_cache=0, activations=0,
...              unit=100 << 20, runtime_overhead=0)
1073741824
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from fractions import Fraction

from edge.errors import BudgetTooSmallError, ConfigError

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Interpreter + numpy + onnxruntime import to ~60 MB RSS here; sessions, their arenas and
# thread stacks add more. A conservative default the planner may replace with a measurement.
DEFAULT_RUNTIME_OVERHEAD = 128 * MiB

# Single letters are binary, like `docker --memory` and GNU tools: "512M" is 512 MiB.
_UNITS: dict[str, int] = {
    "": 1,
    "b": 1,
    "k": KiB,
    "kb": 1000,
    "kib": KiB,
    "m": MiB,
    "mb": 1000**2,
    "mib": MiB,
    "g": GiB,
    "gb": 1000**3,
    "gib": GiB,
    "t": 1 << 40,
    "tb": 1000**4,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*|%)\s*$")
_FORMS = "an int of bytes or a string like '300MB', '1.5GiB', '512M' or '25%'"


def parse_size(value: str | int, *, total: int | None = None) -> int:
    """Bytes meant by `value`; a percentage is of `total` (required for '%'), rounded down.

    Decimal units (KB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB, ... and the bare
    letters K, M, G, T) powers of 1024; units are case-insensitive.
    """
    if isinstance(value, bool):
        raise ConfigError(f"size {value!r} is a bool; give {_FORMS}")
    if not isinstance(value, str):
        try:
            size = operator.index(value)
        except TypeError:
            raise ConfigError(f"size {value!r} is not a size; give {_FORMS}") from None
        if size < 0:
            raise ConfigError(f"size {size} is negative; sizes are bytes >= 0")
        return size
    match = _SIZE.match(value)
    if match is None:
        raise ConfigError(f"size {value!r} is not understood; give {_FORMS}")
    number, unit = Fraction(match.group(1)), match.group(2).lower()
    if unit == "%":
        return _percent(value, number, total)
    if unit not in _UNITS:
        raise ConfigError(
            f"size {value!r} has unknown unit {match.group(2)!r}; "
            f"known: {sorted(u for u in _UNITS if u)} or '%'"
        )
    return int(number * _UNITS[unit])


def _percent(value: str, number: Fraction, total: int | None) -> int:
    if total is None:
        raise ConfigError(f"size {value!r} is a percentage but no total was given to take it of")
    if total < 0:
        raise ConfigError(f"total {total} for size {value!r} is negative")
    if number > 100:
        raise ConfigError(f"size {value!r} is over 100%")
    return int(number * total / 100)


def format_size(nbytes: int) -> str:
    """A short human-readable size for messages ('1.50 GiB', '300.0 MiB', '512 B')."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if abs(nbytes) >= scale:
            return f"{nbytes / scale:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{nbytes} B"


def system_memory() -> int:
    """Physical memory of this machine: what a percentage budget is taken of by default."""
    import psutil

    return int(psutil.virtual_memory().total)


@dataclass(frozen=True)
class MemoryBudget:
    """The bytes this process may spend on the model (weights, window, KV cache, runtime)."""

    limit: int

    def __post_init__(self) -> None:
        if isinstance(self.limit, bool) or not isinstance(self.limit, int) or self.limit <= 0:
            raise ConfigError(
                f"MemoryBudget.limit must be a positive int of bytes, got {self.limit!r}"
            )

    @classmethod
    def parse(cls, value: str | int, *, total: int | None = None) -> MemoryBudget:
        """`MemoryBudget.parse("25%")` takes a percentage of `total`, by default of physical
        memory (psutil), so the same setting scales from a Raspberry Pi to a laptop."""
        if isinstance(value, str) and value.strip().endswith("%") and total is None:
            total = system_memory()
        return cls(parse_size(value, total=total))

    def __str__(self) -> str:
        return format_size(self.limit)


def _check_bytes(**amounts: int) -> None:
    for name, amount in amounts.items():
        if isinstance(amount, bool) or not isinstance(amount, int) or amount < 0:
            raise ConfigError(f"{name} must be an int of bytes >= 0, got {amount!r}")


def minimum_budget(
    *,
    pinned: int,
    kv_cache: int,
    activations: int,
    unit: int,
    runtime_overhead: int = DEFAULT_RUNTIME_OVERHEAD,
) -> int:
    """The smallest budget that runs: everything resident plus a window of one `unit`."""
    _check_bytes(
        pinned=pinned,
        kv_cache=kv_cache,
        activations=activations,
        unit=unit,
        runtime_overhead=runtime_overhead,
    )
    return pinned + kv_cache + activations + runtime_overhead + unit


def window_bytes(
    budget: MemoryBudget,
    *,
    pinned: int,
    kv_cache: int,
    activations: int,
    unit: int,
    runtime_overhead: int = DEFAULT_RUNTIME_OVERHEAD,
) -> int:
    """Bytes left for the streaming window once the rest of the process is paid for.

    `unit` is the buffer size of the largest streamed unit (0 when nothing is streamed).
    Raises `BudgetTooSmallError`, stating the minimum, when not even one unit fits.
    """
    minimum = minimum_budget(
        pinned=pinned,
        kv_cache=kv_cache,
        activations=activations,
        unit=unit,
        runtime_overhead=runtime_overhead,
    )
    if budget.limit < minimum:
        weights = (
            "the pinned parts (the output head, read every token) and the streamed unit"
            if pinned
            else "the streamed unit"
        )
        raise BudgetTooSmallError(
            f"memory budget {format_size(budget.limit)} is too small: the minimum is "
            f"{format_size(minimum)} ({minimum} bytes) = pinned parts {format_size(pinned)} "
            f"+ one streamed unit {format_size(unit)} + KV cache {format_size(kv_cache)} "
            f"+ activations {format_size(activations)} + runtime {format_size(runtime_overhead)}"
            f". What lowers each: the KV cache, a shorter context (--ctx / max_context); "
            f"{weights} (the largest block), a package with fewer bits per weight (edge "
            "export --quant int4); the activations, a shorter prompt step (prefill_chunk); the "
            "runtime is the libraries and tokenizer as measured in this environment",
            budget=budget.limit,
            minimum=minimum,
        )
    return budget.limit - (minimum - unit)
