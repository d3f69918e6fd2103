"""Back the weights in memory with transparent huge pages, where the kernel allows it (Linux).

Why: a decode step reads every weight once. ONNX Runtime packs quantized weights into buffers
it allocates with plain malloc, which Linux backs with 4 KiB pages unless a region is advised
(THP's "madvise" mode, the usual default): 100 MB of weights span ~25,000 pages, far more than
the TLB holds, so every step pays page walks. Measured on 2 cores (bench/profile_decode.py,
BENCHMARKS.md): SmolLM2 int4 decodes ~20% faster, Qwen2.5-Coder-0.5B ~15%.

What is collapsed: every 2 MiB-aligned span of private anonymous memory (and the heap) whose
pages are all resident, with MADV_COLLAPSE (Linux >= 6.1). Such a span already costs 2 MiB, so
memory use does not grow; spans with missing pages (a KV cache not yet written) are left alone,
and no region is advised MADV_HUGEPAGE, which would let the kernel fill them in later.
Elsewhere (another OS, THP "never", an older kernel) this does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
from collections.abc import Iterator

import numpy as np

log = logging.getLogger(__name__)

HUGE_PAGE = 2 << 20
MADV_COLLAPSE = 25
_EINVAL, _ENOMEM = 22, 12
_unsupported = sys.platform != "linux"


def _anonymous_regions(maps: str = "/proc/self/maps") -> Iterator[tuple[int, int]]:
    """(start, end) of this process's writable private anonymous mappings and its heap."""
    with open(maps) as lines:
        for line in lines:
            fields = line.split()
            perms = fields[1]
            name = fields[5] if len(fields) > 5 else ""
            if perms.startswith("rw") and perms[3] == "p" and name in ("", "[heap]"):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                yield start, end


def collapse_resident() -> int:
    """Collapse fully resident 2 MiB spans into huge pages; the bytes now on huge pages."""
    global _unsupported
    if _unsupported:
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        regions = list(_anonymous_regions())
    except (OSError, AttributeError):
        _unsupported = True
        return 0
    pages_per_huge = HUGE_PAGE // mmap.PAGESIZE
    collapsed = 0
    for start, end in regions:
        first = -(-start // HUGE_PAGE) * HUGE_PAGE
        spans = (end - first) // HUGE_PAGE if end > first else 0
        if spans < 1:
            continue
        resident = np.zeros(spans * pages_per_huge, np.uint8)
        if libc.mincore(first, spans * HUGE_PAGE, resident.ctypes.data) != 0:
            continue  # unmapped meanwhile (another thread freed it)
        full = (resident.reshape(spans, pages_per_huge) & 1).all(axis=1)
        for span in np.flatnonzero(full):
            if libc.madvise(first + int(span) * HUGE_PAGE, HUGE_PAGE, MADV_COLLAPSE) == 0:
                collapsed += HUGE_PAGE
                continue
            error = ctypes.get_errno()
            if error == _EINVAL and not collapsed:  # no MADV_COLLAPSE (kernel < 6.1, THP off)
                _unsupported = True
                return 0
            if error == _ENOMEM:  # no free huge page left: stop asking
                return collapsed
    log.debug("%d MiB of resident memory now on huge pages", collapsed >> 20)
    return collapsed
