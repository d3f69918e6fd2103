"""What streaming cost: per-token I/O wait, compute and overlap, and the timeline plot.

Overlap is the share of disk-read time hidden behind compute: 1 means every read finished
while earlier blocks computed (the window works), 0 means the model waited for every byte.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import ConfigError
from memory_sched.timeline import TimelineEvent

if TYPE_CHECKING:
    from edge.streaming.backend import StreamedLoaded


@dataclass(frozen=True)
class StreamSummary:
    tokens: int
    seconds_per_token: float
    io_wait_per_token: float
    compute_per_token: float
    bytes_per_token: float
    read_seconds_per_token: float

    @property
    def tokens_per_second(self) -> float:
        return 1.0 / self.seconds_per_token if self.seconds_per_token else 0.0

    @property
    def overlap(self) -> float:
        """Share of read time not waited for (hidden behind compute)."""
        if self.read_seconds_per_token <= 0:
            return 1.0
        hidden = self.read_seconds_per_token - self.io_wait_per_token
        return min(1.0, max(0.0, hidden / self.read_seconds_per_token))

    @property
    def read_throughput(self) -> float:
        """Bytes per second while reading."""
        return (
            self.bytes_per_token / self.read_seconds_per_token
            if self.read_seconds_per_token
            else 0.0
        )

    def line(self) -> str:
        return (
            f"{self.tokens_per_second:.2f} tok/s | per token: "
            f"{self.seconds_per_token * 1e3:.0f} ms = compute "
            f"{self.compute_per_token * 1e3:.0f} ms + I/O wait "
            f"{self.io_wait_per_token * 1e3:.0f} ms | read {self.bytes_per_token / 1e6:.0f} "
            f"MB/token at {self.read_throughput / 1e9:.2f} GB/s | overlap {self.overlap:.0%}"
        )


def summarize(state: StreamedLoaded, events: tuple[TimelineEvent, ...] = ()) -> StreamSummary:
    """Medians over a streamed segment's single-token (decode) steps (`streamed_state`)."""
    steps = [s for s in state.stats.steps if s.tokens == 1]
    if not steps:
        raise ConfigError("no decode steps to summarize yet")
    reads = [e for e in events if e.kind == "read"]
    per_step: dict[int, float] = {}
    for e in reads:
        per_step[e.step] = per_step.get(e.step, 0.0) + e.seconds
    read_s = statistics.median(per_step.values()) if per_step else 0.0
    return StreamSummary(
        len(steps),
        statistics.median(s.seconds for s in steps),
        statistics.median(s.io_wait for s in steps),
        statistics.median(s.seconds - s.io_wait for s in steps),
        statistics.median(s.bytes_read for s in steps),
        read_s,
    )


def plot_timeline(
    events: tuple[TimelineEvent, ...], path: str | Path, last_steps: int = 3, title: str = ""
) -> Path:
    """A PNG of disk reads (one lane) against compute per block (another), last few steps."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ConfigError("the timeline plot needs matplotlib: pip install 'edge[plot]'") from exc
    shown = [e for e in events if e.kind in ("read", "hold")]
    if not shown:
        raise ConfigError("nothing was streamed: no reads to plot")
    first_step = max(e.step for e in shown) - last_steps + 1
    shown = [e for e in shown if e.step >= first_step]
    t0 = min(e.start for e in shown)
    fig, ax = plt.subplots(figsize=(12, 2.8))
    colors = plt.get_cmap("tab20")
    names = sorted({e.part for e in shown}, key=_block_order)
    for e in shown:
        lane = 1 if e.kind == "read" else 0
        ax.broken_barh(
            [((e.start - t0) * 1e3, max(e.seconds * 1e3, 0.05))],
            (lane * 10, 8),
            facecolors=colors(names.index(e.part) % 20),
            edgecolor="none",
        )
    ax.set_yticks([4, 14], ["compute (streamed blocks)", "disk reads"])
    ax.set_xlabel("milliseconds")
    ax.set_title(title or f"streamed weights: the last {last_steps} steps")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _block_order(name: str) -> tuple[int, str]:
    digits = "".join(c for c in name if c.isdigit())
    return (int(digits) if digits else -1, name)
