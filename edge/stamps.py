"""Small JSON records in edge's cache that remember an expensive check (a file's sha256).

A record is keyed by what a user cannot forge casually: a file's inode, ctime, size and mtime.
Restoring an mtime (`touch -r`) changes the ctime, so a modified file is always hashed again.
The cache is a convenience: a full, read-only or corrupt cache directory must never make a run
fail, so reading gives `None` and writing warns once instead of raising.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

# A stamp is a few hundred bytes; anything larger is not ours (and would be slow to parse).
MAX_STAMP_BYTES = 1 << 20
# File timestamps are coarse (a kernel tick): a file changed again within this long of a hash
# could keep its fingerprint, so such a hash is not remembered.
RACY_NS = 2_000_000_000


def fingerprint(stat: os.stat_result) -> list[int]:
    """What identifies one version of a file without reading it: inode, ctime, size, mtime."""
    return [stat.st_ino, stat.st_ctime_ns, stat.st_size, stat.st_mtime_ns]


def settled(prints: list[list[int]], hashed_at_ns: int) -> bool:
    """Whether every fingerprint's ctime is old enough, at `hashed_at_ns` (`time.time_ns()`
    when hashing began), that a later change must show in the fingerprint."""
    return all(p[1] < hashed_at_ns - RACY_NS for p in prints)


def read_stamp(path: Path) -> Any | None:
    """The JSON value stored at `path`, or None when it is missing, unreadable or malformed."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_STAMP_BYTES + 1)
        if len(raw) > MAX_STAMP_BYTES:
            return None
        return json.loads(raw.decode("utf-8"))
    except (OSError, ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def write_stamp(path: Path, value: Any) -> bool:
    """Store `value` at `path` atomically; on a full or read-only cache warn and return False."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(value), encoding="utf-8")
        os.replace(tmp, path)
        return True
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        warnings.warn(
            f"edge could not write {path} ({exc.strerror or exc}); the check it "
            "records will run again next time",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
