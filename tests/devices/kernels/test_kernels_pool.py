"""The kernel pool runs ctypes calls on several threads at once and hands errors back."""

from __future__ import annotations

import threading

import pytest

from devices.kernels.pool import KernelPool, get_pool, physical_cores
from edge.errors import ConfigError


def test_runs_every_task_once_on_distinct_threads() -> None:
    pool = get_pool(3)
    seen: list[int] = []
    lock = threading.Lock()

    def task(i: int) -> None:
        with lock:
            seen.append((i, threading.get_ident()))

    for _ in range(50):  # reused many times: no task lost, none run twice
        seen.clear()
        pool.run([lambda i=i: task(i) for i in range(3)])
        assert sorted(i for i, _ in seen) == [0, 1, 2]
        assert len({ident for _, ident in seen}) == 3
    assert get_pool(3) is pool


def test_fewer_tasks_than_threads_and_none() -> None:
    pool = KernelPool(4)
    done: list[int] = []
    pool.run([lambda: done.append(1)])
    pool.run([])
    assert done == [1]


def test_errors_reach_the_caller_and_the_pool_survives() -> None:
    pool = KernelPool(2)

    def boom() -> None:
        raise RuntimeError("worker failed")

    with pytest.raises(RuntimeError, match="worker failed"):
        pool.run([lambda: None, boom])
    with pytest.raises(RuntimeError, match="worker failed"):
        pool.run([boom, lambda: None])
    done: list[int] = []
    pool.run([lambda: done.append(0), lambda: done.append(1)])
    assert sorted(done) == [0, 1]


def test_bad_sizes_raise() -> None:
    with pytest.raises(ConfigError, match="threads"):
        KernelPool(0)
    with pytest.raises(ConfigError, match="3 tasks"):
        KernelPool(2).run([lambda: None] * 3)
    assert physical_cores() >= 1
