"""Moving resident memory onto huge pages: what is written moves, what is not stays unbacked,
and memory use does not grow (Linux with THP; elsewhere it must do nothing, quietly)."""

from __future__ import annotations

import json
import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import huge_pages
from edge.huge_pages import HUGE_PAGE, collapse_resident

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")
REPO = Path(__file__).resolve().parents[1]


def thp_possible() -> bool:
    return sys.platform == "linux" and THP.is_file() and "[never]" not in THP.read_text()


def status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(field)


def huge_bytes_in(array: np.ndarray) -> int:
    """AnonHugePages of the mappings that hold `array`."""
    first, last = array.ctypes.data, array.ctypes.data + array.nbytes
    inside, total = False, 0
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and not head.endswith(":"):
            start, end = (int(x, 16) for x in head.split("-"))
            inside = start < last and first < end
        elif inside and head == "AnonHugePages:":
            total += int(line.split()[1]) * 1024
    return total


def resident_pages(array: np.ndarray) -> int:
    """Pages of `array` in memory (mincore); its mapping may have merged with a neighbour's,
    so smaps alone cannot tell."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    pages = np.zeros(-(-array.nbytes // mmap.PAGESIZE), np.uint8)
    assert libc.mincore(array.ctypes.data, array.nbytes, pages.ctypes.data) == 0
    return int((pages & 1).sum())


def written_memory_check() -> dict[str, int | bool]:
    """Write 8 huge pages' worth, leave 64 mapped but untouched, collapse; what moved and what
    memory use did. Run in a fresh interpreter (`python -c`): in a test process holding
    gigabytes, other threads' allocations while it collapses would blur the measurement."""
    # Fresh anonymous mappings (malloc could hand back memory an earlier test wrote).
    private = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    written = mmap.mmap(-1, 8 * HUGE_PAGE, flags=private)
    fresh = mmap.mmap(-1, 64 * HUGE_PAGE, flags=private)
    weights = np.frombuffer(written, np.float32)
    weights[:] = 1.5  # written: every page resident
    untouched = np.frombuffer(fresh, np.uint8)  # mapped, never written
    rss = status("VmRSS")
    collapsed = collapse_resident()
    return {
        "collapsed": collapsed,
        "huge": huge_bytes_in(weights),
        "untouched_resident": resident_pages(untouched),
        "growth": status("VmRSS") - rss,
        "values_kept": float(weights.sum()) == 1.5 * weights.size,
    }


@pytest.mark.skipif(not thp_possible(), reason="needs Linux with transparent huge pages")
def test_written_memory_moves_onto_huge_pages_without_growing() -> None:
    child = "import json, tests.test_huge_pages as t; print(json.dumps(t.written_memory_check()))"
    out = subprocess.run(
        [sys.executable, "-c", child], capture_output=True, text=True, cwd=REPO, check=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if result["collapsed"] == 0:
        pytest.skip("this kernel has no MADV_COLLAPSE (Linux < 6.1) or no free huge pages")
    assert result["huge"] >= 6 * HUGE_PAGE  # all but the unaligned ends
    assert result["untouched_resident"] == 0  # not filled in (nor made resident)
    assert result["growth"] < 4 * HUGE_PAGE  # replaced, not added
    assert result["values_kept"]  # the values survive the move


def test_without_support_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Another OS, or a kernel that refused once: no call is made and nothing is claimed."""
    monkeypatch.setattr(huge_pages, "_unsupported", True)
    assert collapse_resident() == 0


def test_regions_are_private_anonymous_ones(tmp_path: Path) -> None:
    maps = tmp_path / "maps"
    maps.write_text(
        "00400000-00600000 r-xp 00000000 08:01 1 /usr/bin/python3\n"
        "01000000-01400000 rw-p 00000000 00:00 0 [heap]\n"
        "7f0000000000-7f0000400000 rw-p 00000000 00:00 0 \n"
        "7f0000400000-7f0000800000 rw-s 00000000 00:05 9 /dev/shm/x\n"
        "7f0000800000-7f0000c00000 rw-p 00000000 08:01 2 /data/block.000.bin\n"
        "7ffd00000000-7ffd00200000 rw-p 00000000 00:00 0 [stack]\n"
    )
    assert list(huge_pages._anonymous_regions(str(maps))) == [
        (0x01000000, 0x01400000),
        (0x7F0000000000, 0x7F0000400000),
    ]
    assert mmap.PAGESIZE <= HUGE_PAGE
