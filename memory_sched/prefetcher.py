"""The prefetcher: a background thread reads streamed units ahead into a fixed buffer pool.

The pool holds `policy.window` buffers, each as large as the largest streamed unit, allocated
once (so memory is bounded and never fragments). The reader follows `policy.read_sequence()`
and blocks when no buffer is free (backpressure); the consumer `acquire`s units in the policy's
order, blocking only if a read is late, and `release`s each when done, which frees its buffer
for the unit entering the window. A read error stops the reader and is raised, as a
`StreamReadError` naming the part, by the next `acquire`; `reset()` restarts streaming.

>>> with Prefetcher(store, policy) as prefetcher:
...     for unit in policy.streamed:          # one step; pinned units run from elsewhere
...         weights = prefetcher.acquire(unit)
...         run(unit, weights.tensors)         # views valid until release
...         prefetcher.release(unit)
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from dataclasses import dataclass

import numpy as np

from edge.errors import ConfigError, EdgeError, StreamReadError
from memory_sched.store import PartWeights, WeightStore, allocate_buffer
from memory_sched.timeline import StepStats, Timeline, TimelineEvent
from memory_sched.window import WindowPolicy


class PrefetchUsageError(EdgeError, RuntimeError):
    """The prefetcher was used against its contract (closed, out of order, all buffers held)."""


@dataclass
class _Slot:
    name: str
    buffer: int
    weights: PartWeights


class Prefetcher:
    """Streams `policy.streamed` units from `store` through `buffers` (= the policy's window)
    preallocated buffers; thread-safe, one consumer at a time."""

    def __init__(
        self,
        store: WeightStore,
        policy: WindowPolicy,
        buffers: int | None = None,
        *,
        timeline: Timeline | None = None,
        start: bool = True,
    ) -> None:
        if not policy.streamed:
            raise ConfigError("the policy streams no unit (all are pinned): nothing to prefetch")
        buffers = policy.window if buffers is None else buffers
        if buffers != policy.window:
            raise ConfigError(
                f"buffers ({buffers}) must equal the policy's window "
                f"({policy.window}): the window is the buffers resident at once"
            )
        missing = [n for n in policy.streamed if n not in store.names]
        if missing:
            raise ConfigError(f"streamed units {missing} are not in the WeightStore")
        self.store = store
        self.policy = policy
        self.buffer_bytes = store.max_buffer_bytes(policy.streamed)
        self._buffers: list[np.ndarray] = [
            allocate_buffer(self.buffer_bytes) for _ in range(buffers)
        ]
        self.timeline = timeline or Timeline()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._step_base = 0
        self._clear_state()
        if start:
            self.start()

    # ---- lifecycle --------------------------------------------------------------------------

    @property
    def buffers(self) -> int:
        return len(self._buffers)

    @property
    def running(self) -> bool:
        """Whether the reader thread is alive (it ends on close, reset, an error, or after
        one pass when the window keeps every unit)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def resident_bytes(self) -> int:
        """Memory the pool holds: what the window costs against the budget."""
        return self.buffers * self.buffer_bytes

    def _clear_state(self) -> None:
        self._free: deque[int] = deque(range(len(self._buffers)))
        self._slots: dict[int, _Slot] = {}  # read index -> loaded unit
        self._held: Counter[int] = Counter()  # read index -> acquires not yet released
        self._reading: str | None = None
        self._error: tuple[str, BaseException] | None = None
        self._acquired = 0  # acquires since the (re)start
        self._hold_start: dict[int, tuple[float, int]] = {}  # read index -> (time, step)
        self._stopping = False

    def start(self) -> None:
        """Start the reader (done by the constructor unless `start=False`)."""
        with self._cond:
            if self._closed:
                raise PrefetchUsageError("the prefetcher is closed")
            if self._thread is not None:
                return
            self._thread = threading.Thread(
                target=self._run, args=(self._step_base,), name="edge-prefetch", daemon=True
            )
        self._thread.start()

    def _stop_reader(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
            thread, self._thread = self._thread, None
        # A read in flight finishes first (a preadv cannot be interrupted): one unit at most.
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def reset(self) -> None:
        """Drop everything loaded and restart at the first unit of a new step; clears an error.

        Views from earlier `acquire`s become invalid (their buffers are reused).
        """
        if self._closed:
            raise PrefetchUsageError("the prefetcher is closed; make a new one")
        self._stop_reader()
        with self._cond:
            self._step_base = self._current_step() + 1
            self._clear_state()
        self.start()

    def close(self) -> None:
        """Stop the reader and free the buffers; idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._stop_reader()
        with self._cond:
            self._slots.clear()
            self._buffers = []
            self._cond.notify_all()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- the reader -------------------------------------------------------------------------

    def _read_index(self, acquire_index: int) -> int:
        # With a window that keeps all, each unit is read once and reused every step.
        n = len(self.policy.streamed)
        return acquire_index % n if self.policy.keeps_all else acquire_index

    def _run(self, step_base: int) -> None:
        for index, name in enumerate(self.policy.read_sequence()):
            with self._cond:
                while not self._free and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                buffer = self._free.popleft()
                self._reading = name
            try:
                weights = self.store.read_into(name, self._buffers[buffer])
            except BaseException as exc:  # handed to the consumer by its next acquire
                with self._cond:
                    self._free.append(buffer)
                    self._reading = None
                    self._error = (name, exc)
                    self._cond.notify_all()
                return
            stats = weights.stats
            step = step_base + index // len(self.policy.streamed)
            self.timeline.record(
                TimelineEvent("read", name, step, stats.start, stats.end, stats.nbytes)
            )
            with self._cond:
                self._slots[index] = _Slot(name, buffer, weights)
                self._reading = None
                self._cond.notify_all()

    # ---- the consumer -----------------------------------------------------------------------

    def _current_step(self) -> int:
        return self._step_base + self._acquired // len(self.policy.streamed)

    def _check_usable(self) -> None:
        if self._closed:
            raise PrefetchUsageError("the prefetcher is closed")
        if self._error is not None:
            part, exc = self._error
            detail = (
                str(exc)
                if isinstance(exc, StreamReadError)
                else (f"reading part {part!r} failed: {type(exc).__name__}: {exc}")
            )
            raise StreamReadError(
                f"{detail} (the prefetcher stopped; call reset() to stream again)"
            ) from exc

    def acquire(self, part: str) -> PartWeights:
        """The weights of `part`, the next unit in the policy's order; blocks until read.

        Raises `StreamReadError` if the reader failed, `PrefetchUsageError` when `part` is
        not the unit expected next or every buffer is held by the caller.
        """
        start = time.perf_counter()
        with self._cond:
            self._check_usable()
            if part in self.policy.pinned:
                raise PrefetchUsageError(
                    f"{part!r} is pinned: it stays resident outside the "
                    "window and is never streamed"
                )
            expected = self.policy.streamed[self._acquired % len(self.policy.streamed)]
            if part != expected:
                raise PrefetchUsageError(
                    f"acquire({part!r}) out of order: the window streams "
                    f"{expected!r} next (order {list(self.policy.streamed)})"
                )
            index = self._read_index(self._acquired)
            while index not in self._slots:
                self._check_usable()
                if self._thread is None:
                    raise PrefetchUsageError("the prefetcher was not started: call start()")
                if not self._free and self._reading is None:
                    raise PrefetchUsageError(
                        f"cannot acquire {part!r}: all {self.buffers} buffers hold units not yet "
                        "released; release one first"
                    )
                self._cond.wait()
            step = self._current_step()
            self._acquired += 1
            self._held[index] += 1
            weights = self._slots[index].weights
            end = time.perf_counter()
            self._hold_start[index] = (end, step)
        self.timeline.record(TimelineEvent("wait", part, step, start, end))
        return weights

    def release(self, part: str) -> None:
        """Done with `part`: its buffer goes to the next unit unless the window keeps all."""
        now = time.perf_counter()
        with self._cond:
            if self._closed:
                return
            held = sorted(i for i, c in self._held.items() if c and self._slots[i].name == part)
            if not held:
                raise PrefetchUsageError(f"release({part!r}) without a matching acquire")
            index = held[0]
            self._held[index] -= 1
            if not self._held[index]:
                del self._held[index]
                if part in self.policy.evictions_after(part):
                    self._free.append(self._slots.pop(index).buffer)
                    self._cond.notify_all()
            begun, step = self._hold_start.pop(index, (now, self._current_step()))
        self.timeline.record(TimelineEvent("hold", part, step, begun, now))

    # ---- what happened ----------------------------------------------------------------------

    def events(self) -> tuple[TimelineEvent, ...]:
        """The recorded reads, waits and holds, oldest first."""
        return self.timeline.events()

    def step_stats(self) -> tuple[StepStats, ...]:
        """Per step: I/O wait, bytes and reads for its units."""
        return self.timeline.steps()
