"""Disk-streamed weights: weight store, sliding-window policy, prefetcher (the streaming issue).

TPI-LLM's sliding window: parts too large for the memory budget stay on disk and are read,
a few units ahead, into a fixed pool of buffers while earlier units compute. The pieces:

- `budget`: parse sizes ("300MB", "25%"), split a `MemoryBudget` (`window_bytes`).
- `store`: `WeightStore` reads a part into a preallocated buffer (large preads, O_DIRECT).
- `units`: streaming units, whole blocks or attention/MLP halves.
- `window`: `WindowPolicy`, pure: what is resident, what to read next, what to evict.
- `prefetcher`: `Prefetcher`, the background reader with backpressure, `acquire`/`release`.
- `timeline`: events and per-step stats for plots.
- `sizing`: `plan_stream`, package + budget -> units, policy and pool size in one call.

Imports only the standard library, numpy, psutil and `edge.format`/`edge.errors`.
"""

from memory_sched.budget import MemoryBudget, parse_size, window_bytes
from memory_sched.prefetcher import Prefetcher, PrefetchUsageError
from memory_sched.sizing import StreamPlan, plan_stream
from memory_sched.store import PartWeights, ReadStats, WeightStore, allocate_buffer
from memory_sched.timeline import StepStats, TimelineEvent
from memory_sched.units import split_block, stream_units
from memory_sched.window import WindowPolicy, window_size

__all__ = [
    "MemoryBudget",
    "PartWeights",
    "PrefetchUsageError",
    "Prefetcher",
    "ReadStats",
    "StepStats",
    "StreamPlan",
    "TimelineEvent",
    "WeightStore",
    "WindowPolicy",
    "allocate_buffer",
    "parse_size",
    "plan_stream",
    "split_block",
    "stream_units",
    "window_bytes",
    "window_size",
]
