"""Giving freed heap memory back: glibc keeps what a process frees for its next allocations.

Loading leaves large freed buffers behind: `tokenizers` parses tokenizer.json into a tree it
then drops (a Qwen2.5 tokenizer holds 148 MiB right after loading, 47 MiB once trimmed), and
ONNX Runtime frees its unpacked weight copies after pre-packing (Qwen2.5-Coder-1.5B int4: 1829
MiB loaded, 1599 MiB trimmed). glibc returns such memory to the system only from the top of
its heap; `malloc_trim(0)` releases every free page, so RSS is what the model really holds.
Pinning glibc's mmap threshold (`pin_mmap_threshold`) makes a process's memory predictable,
at a cost: glibc raises the threshold when a process frees a mapped block, after which ONNX
Runtime's per-matrix copies come from the heap and what it frees after pre-packing fragments
it (the same SmolLM2 fp32 model peaked anywhere in 1241-1390 MiB; pinned, 1227-1229 every
run). But every allocation above the pinned threshold then maps fresh zeroed pages: pinned in
the engine, the test suite's system time went from 3.4 to 5.8 minutes. Cluster workers pin it
(a worker only loads and steps); models and engines do not.
Elsewhere (another C library, another OS) these do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
MMAP_THRESHOLD = 128 << 10  # glibc's default, which it would otherwise raise


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.malloc_trim  # noqa: B018 - only glibc has it
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def trim() -> bool:
    """Return every free heap page to the system (a few ms); False where there is no glibc."""
    libc = _glibc()
    return bool(libc is not None and libc.malloc_trim(0))


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold (and so its trim threshold) for this process. By default glibc
    raises it to the size of any mapped block the process frees (hashing a package frees 8 MiB
    buffers), after which ONNX Runtime's per-matrix copies come from the heap, where what it
    frees after pre-packing stays as fragmentation: a slice of SmolLM2 fp32 held 470 MiB after
    a hash, 398 without (VmRSS). glibc only (False elsewhere)."""
    libc = _glibc()
    return bool(libc is not None and libc.mallopt(M_MMAP_THRESHOLD, threshold))
