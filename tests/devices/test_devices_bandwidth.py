"""measure_read_bandwidth returns a positive rate and rejects bad arguments (no timing checks)."""

from __future__ import annotations

import pytest

from devices.bandwidth import measure_read_bandwidth
from edge.errors import ConfigError


@pytest.mark.parametrize("threads", [1, 2])
def test_small_buffer_gives_a_positive_rate(threads: int) -> None:
    gbps = measure_read_bandwidth(threads, size_bytes=1 << 20, repeats=2)
    assert gbps > 0 and gbps == gbps  # positive and not NaN


def test_odd_sizes_are_rounded_not_rejected() -> None:
    assert measure_read_bandwidth(3, size_bytes=4099, repeats=1) > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"threads": 0}, "threads"),
        ({"threads": True}, "threads"),
        ({"threads": 1, "size_bytes": 100}, "size_bytes"),
        ({"threads": 1, "repeats": 0}, "repeats"),
    ],
)
def test_bad_arguments_raise(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        measure_read_bandwidth(**kwargs)
