"""A small persistent thread pool for native kernels called through ctypes.

`ctypes.CFUNCTYPE` calls release the GIL, so plain Python threads run JIT-compiled kernels on
all cores. Starting threads per call would cost more than a whole GEMV, so workers live for the
process and wait on a lock each; the caller's own thread runs the first share of the work.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from edge.errors import ConfigError


def physical_cores() -> int:
    """Physical cores (hyper-threads share one core's FMA units, so they add nothing here)."""
    try:
        import psutil

        cores = psutil.cpu_count(logical=False)
    except ImportError:  # psutil is a runtime dependency, but a bare numpy install still works
        cores = None
    return max(1, cores or os.cpu_count() or 1)


class _Worker:
    """One daemon thread that runs one task per `start` and signals `wait`."""

    def __init__(self, name: str) -> None:
        self._go = threading.Lock()
        self._go.acquire()
        self._done = threading.Lock()
        self._done.acquire()
        self._task: Callable[[], None] | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def _loop(self) -> None:
        while True:
            self._go.acquire()
            try:
                self._task()  # type: ignore[misc]  (set by start before releasing _go)
            except BaseException as error:  # handed to the caller's thread by wait()
                self._error = error
            self._done.release()

    def start(self, task: Callable[[], None]) -> None:
        self._task = task
        self._go.release()

    def wait(self) -> BaseException | None:
        self._done.acquire()
        error, self._error, self._task = self._error, None, None
        return error


class KernelPool:
    """Runs up to `threads` callables at once: one on the caller's thread, the rest on workers.

    Example:
        >>> pool = get_pool(2)
        >>> pool.run([lambda: kernel(0, 512), lambda: kernel(512, 1024)])  # doctest: +SKIP
    """

    def __init__(self, threads: int) -> None:
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"KernelPool threads must be a positive int, got {threads!r}")
        self.threads = threads
        self._workers = [_Worker(f"edge-kernel-{i}") for i in range(1, threads)]
        self._lock = threading.Lock()  # one batch at a time: workers hold one task each

    def run(self, tasks: Sequence[Callable[[], None]]) -> None:
        """Run every task and return when all are done; re-raise the first task's error."""
        if len(tasks) > self.threads:
            raise ConfigError(f"KernelPool of {self.threads} threads got {len(tasks)} tasks")
        if not tasks:
            return
        with self._lock:
            helpers = self._workers[: len(tasks) - 1]
            for worker, task in zip(helpers, tasks[1:]):
                worker.start(task)
            first: BaseException | None = None
            try:
                tasks[0]()
            except BaseException as error:  # still wait for the workers before raising
                first = error
            errors = [worker.wait() for worker in helpers]
        for error in [first, *errors]:
            if error is not None:
                raise error


_pools: dict[int, KernelPool] = {}
_pools_lock = threading.Lock()


def get_pool(threads: int) -> KernelPool:
    """The process-wide pool of `threads` threads (kernels share workers instead of each
    starting their own)."""
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = KernelPool(threads)
        return pool
