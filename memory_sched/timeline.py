"""What streaming did, for plots and stats: a timeline of reads and waits, and per-step totals.

A step is one pass over the execution order (a decode token or a prefill chunk). Events carry
`time.perf_counter` timestamps, the same clock as `ReadStats`, so a plot can put disk reads,
waits for them and compute (the `hold` spans) on one axis and show whether reads hide behind
compute. The recorder is bounded: a long generation keeps only the latest events and steps.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from dataclasses import dataclass

EVENT_KINDS = ("read", "wait", "hold")


@dataclass(frozen=True)
class TimelineEvent:
    """`read`: a unit's disk read; `wait`: an `acquire` from call to return; `hold`: from
    `acquire` returning to `release` (the consumer's compute on that unit)."""

    kind: str
    part: str
    step: int
    start: float
    end: float
    nbytes: int = 0

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class StepStats:
    """Totals of one step: time the consumer waited for reads, and the reads for its units."""

    step: int
    io_wait_s: float
    bytes_read: int
    reads: int
    acquires: int
    read_s: float


class Timeline:
    """Thread-safe recorder of events and per-step totals, keeping the latest `limit` events
    and `step_limit` steps."""

    def __init__(self, limit: int = 100_000, step_limit: int = 10_000) -> None:
        self._events: deque[TimelineEvent] = deque(maxlen=limit)
        self._steps: OrderedDict[int, list[float]] = OrderedDict()
        self._step_limit = step_limit
        self._lock = threading.Lock()

    def record(self, event: TimelineEvent) -> None:
        assert event.kind in EVENT_KINDS, event.kind
        with self._lock:
            self._events.append(event)
            totals = self._steps.get(event.step)
            if totals is None:
                totals = self._steps[event.step] = [0.0, 0, 0, 0, 0.0]
                while len(self._steps) > self._step_limit:
                    self._steps.popitem(last=False)
            if event.kind == "read":
                totals[1] += event.nbytes
                totals[2] += 1
                totals[4] += event.seconds
            elif event.kind == "wait":
                totals[0] += event.seconds
                totals[3] += 1

    def events(self) -> tuple[TimelineEvent, ...]:
        with self._lock:
            return tuple(self._events)

    def steps(self) -> tuple[StepStats, ...]:
        with self._lock:
            return tuple(
                StepStats(step, t[0], int(t[1]), int(t[2]), int(t[3]), t[4])
                for step, t in sorted(self._steps.items())
            )

    def clear(self) -> None:
        with self._lock:
            self._events.clear()
            self._steps.clear()
