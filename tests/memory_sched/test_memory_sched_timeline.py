"""The streaming timeline: per-step totals add up, and a long run keeps only the latest."""

from __future__ import annotations

from memory_sched.timeline import Timeline, TimelineEvent


def test_step_totals_add_up() -> None:
    timeline = Timeline()
    timeline.record(TimelineEvent("read", "b0", 0, 1.0, 1.5, 100))
    timeline.record(TimelineEvent("read", "b1", 0, 1.5, 2.5, 50))
    timeline.record(TimelineEvent("wait", "b0", 0, 1.0, 1.25))
    timeline.record(TimelineEvent("hold", "b0", 0, 1.25, 3.0))
    timeline.record(TimelineEvent("read", "b0", 1, 2.5, 3.0, 100))
    first, second = timeline.steps()
    assert (first.step, first.bytes_read, first.reads, first.acquires) == (0, 150, 2, 1)
    assert first.io_wait_s == 0.25 and first.read_s == 1.5
    assert (second.step, second.bytes_read, second.io_wait_s) == (1, 100, 0.0)
    assert [e.kind for e in timeline.events()] == ["read", "read", "wait", "hold", "read"]


def test_bounded_and_clearable() -> None:
    timeline = Timeline(limit=3, step_limit=2)
    for step in range(5):
        timeline.record(TimelineEvent("read", "b", step, 0.0, 1.0, 1))
    assert [e.step for e in timeline.events()] == [2, 3, 4]
    assert [s.step for s in timeline.steps()] == [3, 4]
    timeline.clear()
    assert timeline.events() == () and timeline.steps() == ()
