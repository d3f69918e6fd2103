"""Where the parts of a device that left run now: on this machine, resident if they fit.

A cluster is used because no one device holds the model, so a worker's range moved to the
coordinator resident (ONNX Runtime holds its weights, about their size) may not fit there. When
the range's weights do not fit in the memory available now, they run on the `streamed` backend
instead: a window of blocks read from this machine's copy of the package while the others
compute, under a budget of what the process holds now plus the share of the available memory
it may take. Slower than resident, but the generation goes on where it would have run out of
memory.
"""

from __future__ import annotations

from collections.abc import Sequence

from edge.format import PartEntry
from edge.placement import DEFAULT_BACKEND, part_bytes

# Of the memory available now, the share a re-placed range may take (the KV cache, the page
# cache and the rest of the process need the remainder).
AVAILABLE_SHARE = 0.7
# ONNX Runtime's resident copy of a range's weights, as a multiple of their bytes (its packed
# layouts and arena; the planner measures 0.99-1.11x).
RESIDENT_FACTOR = 1.15


def local_fallback(
    parts: Sequence[PartEntry], remote_bytes: int
) -> tuple[str, dict[str, int | bool]]:
    """(backend, options) for `parts` whose device left. `remote_bytes`: weights of the other
    parts that still run elsewhere (a streamed budget counts every other part as held here,
    so those bytes are added to it back)."""
    import psutil

    from devices.memory_info import read_memory

    available = int(read_memory().budget * AVAILABLE_SHARE)
    if sum(part_bytes(p) for p in parts) * RESIDENT_FACTOR <= available:
        return DEFAULT_BACKEND, {}
    held = psutil.Process().memory_info().rss
    return "streamed", {"budget": held + available + remote_bytes, "progress": False}
