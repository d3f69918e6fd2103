"""The prefetcher, checked by behaviour (never by timing): units arrive in order with the right
bytes while the consumer computes, the reader stays within its buffer pool, errors reach the
consumer naming the part and `reset()` recovers, and `close()` never hangs."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ConfigError, StreamReadError
from edge.format import TensorEntry, read_manifest
from edge.package_files import PackageFiles
from memory_sched.prefetcher import Prefetcher, PrefetchUsageError
from memory_sched.store import PartWeights, WeightStore
from memory_sched.window import WindowPolicy

WAIT = 10.0  # seconds before a test gives up waiting for the reader (a hang, not a timing)
PINNED = frozenset({"embed", "head"})


def map_tensor(root: Path, entry: TensorEntry) -> np.ndarray:
    """`entry` mapped through the package's own file access (as `Package.tensor` maps it)."""
    return PackageFiles(root, [entry.file]).map(entry)


class InstrumentedStore(WeightStore):
    """A WeightStore that records its reads, can fail one, and can hold reads at a gate."""

    def __init__(
        self,
        *args,
        fail: tuple[str, int] | None = None,
        gate: threading.Event | None = None,
        **kwargs,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[str] = []
        self.buffers: set[int] = set()
        self.fail = fail  # (part, n): the n-th read of that part raises
        self.gate = gate
        self.changed = threading.Condition()

    def read_into(self, name: str, buffer: np.ndarray) -> PartWeights:
        with self.changed:
            self.calls.append(name)
            self.buffers.add(buffer.ctypes.data)
            count = self.calls.count(name)
        if self.gate is not None:
            assert self.gate.wait(WAIT), "test gate never opened"
        if self.fail == (name, count):
            raise OSError(5, "Input/output error (injected)")
        try:
            return super().read_into(name, buffer)
        finally:
            with self.changed:
                self.changed.notify_all()

    def wait_reads(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.calls) >= count, WAIT), self.calls


def _policy(root: Path, window: int) -> WindowPolicy:
    return WindowPolicy(tuple(p.name for p in read_manifest(root).parts), window, PINNED)


def _store(root: Path, **kwargs) -> InstrumentedStore:
    manifest = read_manifest(root)
    return InstrumentedStore(root, [p for p in manifest.parts if p.name not in PINNED], **kwargs)


def _expected(root: Path) -> dict[str, dict[str, bytes]]:
    return {
        p.name: {t.name: map_tensor(root, t).tobytes() for t in p.tensors}
        for p in read_manifest(root).parts
    }


def _check(weights: PartWeights, expected: dict[str, dict[str, bytes]]) -> float:
    """Verify the bytes, then 'compute' on them like a block would."""
    want = expected[weights.part]
    assert {n: a.tobytes() for n, a in weights.tensors.items()} == want
    return float(sum(np.asarray(a, np.float64).sum() for a in weights.tensors.values()))


@pytest.fixture
def opened() -> Iterator[list[Prefetcher]]:
    """Prefetchers a test opens are closed even when it fails, so no thread outlives it."""
    made: list[Prefetcher] = []
    yield made
    for prefetcher in made:
        prefetcher.close()


def test_units_arrive_in_order_with_the_right_bytes(package: Path, opened) -> None:
    expected = _expected(package)
    store, policy = _store(package), _policy(package, 2)
    prefetcher = Prefetcher(store, policy)
    opened.append(prefetcher)
    for _ in range(3):
        for unit in policy.order:
            if unit in PINNED:
                continue
            weights = prefetcher.acquire(unit)
            assert weights.part == unit
            _check(weights, expected)
            prefetcher.release(unit)
    reads = [e for e in prefetcher.events() if e.kind == "read"]
    assert [e.part for e in reads] == store.calls[: len(reads)]
    assert store.calls[:12] == list(policy.streamed) * 3
    # every unit's read for a step ended before that step's acquire of it returned
    waits = [e for e in prefetcher.events() if e.kind == "wait"]
    for wait in waits:
        (read,) = [r for r in reads if r.part == wait.part and r.step == wait.step]
        assert read.end <= wait.end
    steps = prefetcher.step_stats()
    unit_bytes = sum(store.layout(n).nbytes for n in policy.streamed)
    for step in steps[:3]:
        assert step.acquires == 4 and step.reads == 4 and step.bytes_read == unit_bytes
        assert step.io_wait_s >= 0
    assert prefetcher.resident_bytes == 2 * store.max_buffer_bytes(policy.streamed)


def test_reads_overlap_compute(package: Path, opened) -> None:
    """While the consumer holds block.1 (computing), the reader fills block.0's freed buffer
    with block.2: the read happens during compute, not after it."""
    store, policy = _store(package), _policy(package, 2)
    prefetcher = Prefetcher(store, policy)
    opened.append(prefetcher)
    prefetcher.acquire("block.0")
    prefetcher.release("block.0")
    prefetcher.acquire("block.1")
    store.wait_reads(3)  # would time out if reads waited for compute to finish
    assert store.calls[:3] == ["block.0", "block.1", "block.2"]
    prefetcher.release("block.1")


def test_backpressure_never_exceeds_the_pool(package: Path, opened) -> None:
    store, policy = _store(package), _policy(package, 2)
    prefetcher = Prefetcher(store, policy)
    opened.append(prefetcher)
    prefetcher.acquire("block.0")  # held: the reader may fill only the other buffer
    store.wait_reads(2)
    with store.changed:
        store.changed.wait(0.2)  # give a wrong reader every chance to read a third unit
        assert store.calls == ["block.0", "block.1"]
    prefetcher.release("block.0")
    store.wait_reads(3)
    for unit in ("block.1", "block.2", "block.3", "block.0"):
        prefetcher.acquire(unit)
        prefetcher.release(unit)
    assert len(store.buffers) == 2  # only the pool's buffers were ever read into


def test_window_of_everything_reads_each_unit_once(package: Path, opened) -> None:
    expected = _expected(package)
    store, policy = _store(package), _policy(package, 4)
    prefetcher = Prefetcher(store, policy)
    opened.append(prefetcher)
    for _ in range(3):
        for unit in policy.streamed:
            _check(prefetcher.acquire(unit), expected)
            prefetcher.release(unit)
    assert store.calls == list(policy.streamed)


def test_reader_error_reaches_the_consumer_and_reset_recovers(package: Path, opened) -> None:
    expected = _expected(package)
    store = _store(package, fail=("block.2", 1))
    policy = _policy(package, 2)
    prefetcher = Prefetcher(store, policy)
    opened.append(prefetcher)
    with pytest.raises(StreamReadError, match=r"'block\.2'.*injected.*reset\(\)"):
        for unit in policy.streamed:
            prefetcher.acquire(unit)
            prefetcher.release(unit)
    with pytest.raises(StreamReadError, match=r"'block\.2'"):  # stays failed until reset
        prefetcher.acquire("block.0")
    prefetcher.reset()
    for _ in range(2):
        for unit in policy.streamed:
            _check(prefetcher.acquire(unit), expected)
            prefetcher.release(unit)


def test_truncated_file_surfaces_as_stream_read_error(package: Path, opened) -> None:
    weight = package / "block.001.bin"
    os.truncate(weight, weight.stat().st_size // 2)
    prefetcher = Prefetcher(_store(package), _policy(package, 2))
    opened.append(prefetcher)
    with pytest.raises(StreamReadError, match=r"'block\.1'.*block\.001\.bin.*truncated"):
        for unit in ("block.0", "block.1"):
            prefetcher.acquire(unit)
            prefetcher.release(unit)


def test_close_while_the_reader_waits_for_a_buffer(package: Path) -> None:
    store = _store(package)
    prefetcher = Prefetcher(store, _policy(package, 1))
    prefetcher.acquire("block.0")  # holds the only buffer: the reader blocks
    store.wait_reads(1)
    prefetcher.close()
    assert not prefetcher.running
    prefetcher.close()  # idempotent
    prefetcher.release("block.0")  # harmless after close
    with pytest.raises(PrefetchUsageError, match="closed"):
        prefetcher.acquire("block.1")
    with pytest.raises(PrefetchUsageError, match="closed"):
        prefetcher.reset()


def test_close_wakes_a_consumer_waiting_on_a_slow_read(package: Path) -> None:
    gate = threading.Event()
    store = _store(package, gate=gate)
    prefetcher = Prefetcher(store, _policy(package, 2))
    outcome: list[BaseException] = []

    def consume() -> None:
        try:
            prefetcher.acquire("block.0")
        except BaseException as exc:
            outcome.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    store.wait_reads(1)  # the reader is inside the (gated) read
    closer = threading.Thread(target=prefetcher.close)
    closer.start()
    consumer.join(WAIT)
    assert not consumer.is_alive() and isinstance(outcome[0], PrefetchUsageError)
    gate.set()  # the read in flight finishes; close() then joins the reader
    closer.join(WAIT)
    assert not closer.is_alive() and not prefetcher.running


def test_context_manager_closes(package: Path) -> None:
    with Prefetcher(_store(package), _policy(package, 2)) as prefetcher:
        prefetcher.acquire("block.0")
    assert not prefetcher.running


def test_usage_errors_instead_of_deadlocks(package: Path, opened) -> None:
    prefetcher = Prefetcher(_store(package), _policy(package, 1))
    opened.append(prefetcher)
    with pytest.raises(PrefetchUsageError, match=r"out of order.*'block\.0' next"):
        prefetcher.acquire("block.1")
    with pytest.raises(PrefetchUsageError, match="'embed' is pinned"):
        prefetcher.acquire("embed")
    prefetcher.acquire("block.0")
    with pytest.raises(PrefetchUsageError, match="release one first"):
        prefetcher.acquire("block.1")  # the only buffer is held: would wait forever
    with pytest.raises(PrefetchUsageError, match="without a matching acquire"):
        prefetcher.release("block.2")
    prefetcher.release("block.0")
    prefetcher.acquire("block.1")


def test_not_started_prefetcher_refuses_to_wait(package: Path, opened) -> None:
    prefetcher = Prefetcher(_store(package), _policy(package, 2), start=False)
    opened.append(prefetcher)
    with pytest.raises(PrefetchUsageError, match="not started"):
        prefetcher.acquire("block.0")
    prefetcher.start()
    prefetcher.acquire("block.0")


def test_configuration_errors(package: Path) -> None:
    store, policy = _store(package), _policy(package, 2)
    with pytest.raises(ConfigError, match=r"buffers \(3\) must equal the policy's window \(2\)"):
        Prefetcher(store, policy, buffers=3)
    with pytest.raises(ConfigError, match="not in the WeightStore"):
        Prefetcher(WeightStore(package, []), policy)
    everything = WindowPolicy(policy.order, 1, frozenset(policy.order))
    with pytest.raises(ConfigError, match="streams no unit"):
        Prefetcher(store, everything)
