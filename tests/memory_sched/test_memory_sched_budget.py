"""Memory budgets: sizes parse in every documented form, garbage fails naming the value, and
a budget too small for one streamed unit fails stating the minimum."""

from __future__ import annotations

import pickle

import pytest

from edge.errors import BudgetTooSmallError, ConfigError
from memory_sched.budget import (
    GiB,
    MemoryBudget,
    MiB,
    format_size,
    minimum_budget,
    parse_size,
    window_bytes,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("300MB", 300_000_000),
        ("300 mb", 300_000_000),
        ("1.5GiB", 1_610_612_736),
        ("512M", 512 * MiB),
        ("2g", 2 * GiB),
        ("64KiB", 65536),
        ("1kb", 1000),
        ("4096", 4096),
        ("4096B", 4096),
        (" 1TiB ", 1 << 40),
        (".5GiB", GiB // 2),
        ("0", 0),
        (1234, 1234),
    ],
)
def test_parse_size_forms(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


def test_parse_size_percent_of_explicit_total() -> None:
    assert parse_size("25%", total=8 * GiB) == 2 * GiB
    assert parse_size("12.5 %", total=1000) == 125
    assert parse_size("100%", total=7) == 7


@pytest.mark.parametrize(
    "bad", ["", "abc", "12XB", "-5MB", "1e9", "nan", "1.2.3GB", "5 M B", "inf", "%"]
)
def test_parse_size_garbage_names_the_value(bad: str) -> None:
    with pytest.raises(ConfigError, match="size") as info:
        parse_size(bad)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [-1, 1.5, True, None, [1]])
def test_parse_size_rejects_non_sizes(bad: object) -> None:
    with pytest.raises(ConfigError, match="size"):
        parse_size(bad)  # type: ignore[arg-type]


def test_percent_needs_a_total_and_at_most_100() -> None:
    with pytest.raises(ConfigError, match="no total"):
        parse_size("25%")
    with pytest.raises(ConfigError, match="over 100%"):
        parse_size("150%", total=100)


def test_memory_budget_validates_and_parses() -> None:
    assert MemoryBudget.parse("1GiB").limit == GiB
    assert MemoryBudget.parse("50%", total=4 * GiB) == MemoryBudget(2 * GiB)
    assert MemoryBudget.parse("10%").limit > 0  # default total: physical memory
    assert str(MemoryBudget(3 * GiB // 2)) == "1.50 GiB"
    for bad in (0, -1, 1.5, "1GB", True):
        with pytest.raises(ConfigError, match=r"MemoryBudget\.limit"):
            MemoryBudget(bad)  # type: ignore[arg-type]


def test_window_bytes_is_what_is_left() -> None:
    budget = MemoryBudget(1000)
    left = window_bytes(
        budget, pinned=100, kv_cache=200, activations=50, unit=300, runtime_overhead=150
    )
    assert left == 500
    assert (
        minimum_budget(pinned=100, kv_cache=200, activations=50, unit=300, runtime_overhead=150)
        == 800
    )


def test_budget_exactly_the_minimum_fits_one_unit() -> None:
    parts = {"pinned": 10, "kv_cache": 20, "activations": 5, "unit": 64, "runtime_overhead": 1}
    assert window_bytes(MemoryBudget(minimum_budget(**parts)), **parts) == 64


def test_budget_too_small_states_the_minimum() -> None:
    with pytest.raises(BudgetTooSmallError) as info:
        window_bytes(
            MemoryBudget(300 * MiB),
            pinned=50 * MiB,
            kv_cache=100 * MiB,
            activations=10 * MiB,
            unit=200 * MiB,
            runtime_overhead=128 * MiB,
        )
    error = info.value
    assert isinstance(error, ConfigError) and isinstance(error, ValueError)
    assert error.minimum == 488 * MiB and error.budget == 300 * MiB
    message = str(error)
    assert "300.0 MiB" in message and "488.0 MiB" in message and str(488 * MiB) in message
    assert "one streamed unit 200.0 MiB" in message and "KV cache 100.0 MiB" in message
    # and what a user can do about each part
    assert "a shorter context (--ctx" in message and "--quant int4)" in message
    restored = pickle.loads(pickle.dumps(error))
    assert restored.minimum == error.minimum and str(restored) == message


def test_window_bytes_rejects_negative_amounts() -> None:
    with pytest.raises(ConfigError, match="kv_cache"):
        window_bytes(MemoryBudget(GiB), pinned=0, kv_cache=-1, activations=0, unit=1)


def test_format_size() -> None:
    assert format_size(512) == "512 B"
    assert format_size(1536) == "1.5 KiB"
    assert format_size(300 * MiB) == "300.0 MiB"
