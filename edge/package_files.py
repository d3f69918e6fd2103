"""A package's files, resolved inside its directory and opened once per load.

Every byte a run reads comes through these descriptors: a graph, the tokenizer, a resident
tensor, a streamed block. So a name in a manifest can never reach a file outside the package
(checked once, here), a package directory swapped while a model runs cannot mix two packages'
weights (the descriptors still point at the files that were verified), and a file truncated
under a run gives a typed error naming it instead of the SIGBUS a memory map would raise.
Leaf module: standard library, numpy and `edge.format` only.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import mmap
import os
import stat
import threading
import weakref
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from edge.errors import IntegrityError, PackageError
from edge.format import DTYPES, TensorEntry, storage_shape
from edge.validate import check_name

HASH_CHUNK = 8 << 20
_SEEK_LOCK = threading.Lock()
# O_NONBLOCK: opening a FIFO planted in a package must not wait for a writer (it is refused
# as not a regular file right after); reads of regular files ignore the flag.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
)


class PackageFiles:
    """Open descriptors for the listed files of one package (thread-safe: positioned reads).

    >>> files = PackageFiles(root, ["manifest.json", "embed.bin"])  # doctest: +SKIP
    >>> files.read("embed.bin", 0, 16)  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike[str], names: Iterable[str]) -> None:
        self.root = Path(os.path.realpath(root))
        self._fds: dict[str, int] = {}
        self._direct: dict[str, int | None] = {}
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_all, self._fds, self._direct)
        try:
            self.add(names)
        except BaseException:
            self.close()
            raise

    def add(self, names: Iterable[str]) -> None:
        """Open more files of the package (the manifest first, then what it lists)."""
        for name in names:
            if name not in self._fds:
                self._fds[name] = self._open(name)

    def _open(self, name: str) -> int:
        check_name(name, f"package {self.root}")
        real = os.path.realpath(self.root / name)
        if os.path.commonpath([real, self.root]) != str(self.root):
            raise PackageError(
                f"package {self.root}: {name} is a link to {real}, outside the "
                "package; a package may only read its own files"
            )
        try:
            if not stat.S_ISREG(os.stat(real).st_mode):  # never open a device or a FIFO
                raise PackageError(f"package {self.root}: {name} is not a regular file")
            fd = os.open(real, _OPEN_FLAGS)
        except FileNotFoundError:
            raise PackageError(f"package {self.root} is missing {name}") from None
        except OSError as exc:
            raise PackageError(
                f"package {self.root}: cannot open {name}: {exc.strerror or exc}"
            ) from exc
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise PackageError(f"package {self.root}: {name} is not a regular file")
        return fd

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._fds)

    def fd(self, name: str) -> int:
        """The open descriptor of `name` (shared: use positioned reads, never seek)."""
        try:
            return self._fds[name]
        except KeyError:
            raise PackageError(
                f"package {self.root}: {name!r} is not one of its listed files"
            ) from None

    def stat(self, name: str) -> os.stat_result:
        return os.fstat(self.fd(name))

    def size(self, name: str) -> int:
        return self.stat(name).st_size

    def direct_fd(self, name: str) -> int | None:
        """A second descriptor of the same file with O_DIRECT (reopened through /proc, so it
        is the verified file and not whatever now sits at its path); None where unsupported."""
        fd = self.fd(name)
        with self._lock:
            if name not in self._direct:
                self._direct[name] = _reopen_direct(fd)
            return self._direct[name]

    def readinto(self, name: str, offset: int, target: memoryview) -> None:
        """Fill `target` with bytes [offset, offset + len(target)) of `name`, or raise."""
        fd, got, want = self.fd(name), 0, len(target)
        try:
            while got < want:
                count = pread_into(fd, target[got:], offset + got)
                if count == 0:
                    break
                got += count
        except OSError as exc:
            raise PackageError(
                f"package {self.root}: reading {name} at byte {offset + got} "
                f"failed: {exc.strerror or exc}"
            ) from exc
        if got < want:
            raise IntegrityError(
                f"package {self.root}: {name} is {self.size(name)} bytes, too short for bytes "
                f"[{offset}, {offset + want}): it was truncated or replaced while in use; "
                "re-export or re-pull the package"
            )

    def read(self, name: str, offset: int = 0, nbytes: int | None = None) -> bytes:
        """Bytes of `name` (all of it by default)."""
        nbytes = self.size(name) - offset if nbytes is None else nbytes
        out = bytearray(nbytes)
        self.readinto(name, offset, memoryview(out))
        return bytes(out)

    def tensor(self, entry: TensorEntry) -> np.ndarray:
        """A fresh read-only array holding `entry` (packed 4-bit rows stay packed)."""
        storage, _ = DTYPES[entry.dtype]
        raw = np.empty(entry.nbytes, np.uint8)
        self.readinto(entry.file, entry.offset, memoryview(raw))
        array = raw.view(storage).reshape(storage_shape(entry))
        array.flags.writeable = False
        return array

    def map(self, entry: TensorEntry) -> np.ndarray:
        """A read-only memory map of `entry` through the open descriptor."""
        storage, _ = DTYPES[entry.dtype]
        start = entry.offset - entry.offset % mmap.ALLOCATIONGRANULARITY
        if entry.nbytes == 0:
            return np.empty(storage_shape(entry), storage)
        try:
            region = mmap.mmap(
                self.fd(entry.file),
                entry.offset + entry.nbytes - start,
                access=mmap.ACCESS_READ,
                offset=start,
            )
        except (OSError, ValueError) as exc:
            raise IntegrityError(
                f"package {self.root}: cannot map {entry.name} from "
                f"{entry.file} at [{entry.offset}, "
                f"{entry.offset + entry.nbytes}): {exc}"
            ) from exc
        raw = np.frombuffer(region, np.uint8, entry.nbytes, entry.offset - start)
        return raw.view(storage).reshape(storage_shape(entry))

    def rows(self, entry: TensorEntry) -> TensorRows:
        """`entry` as a table whose rows are read on demand (an embedding in a streamed run)."""
        return TensorRows(self, entry)

    def sha256(self, name: str) -> str:
        digest, buffer = hashlib.sha256(), bytearray(HASH_CHUNK)
        view, offset, fd = memoryview(buffer), 0, self.fd(name)
        while count := pread_into(fd, view, offset):
            digest.update(view[:count])
            offset += count
        return digest.hexdigest()

    def close(self) -> None:
        self._finalizer()

    def __enter__(self) -> PackageFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TensorRows:
    """Rows of a 2-D tensor read through the package's descriptor when indexed: `rows[ids]`.

    Enough of numpy's array interface for an embedding lookup (`shape`, `dtype`, `ndim`,
    integer-array indexing), without mapping the file.
    """

    def __init__(self, files: PackageFiles, entry: TensorEntry) -> None:
        self.shape = storage_shape(entry)
        if not self.shape:
            raise PackageError(f"tensor {entry.name} is a scalar, not a table of rows")
        self.dtype = DTYPES[entry.dtype][0]
        self.ndim = len(self.shape)
        self._files, self._entry = files, entry
        self._row_bytes = math.prod(self.shape[1:]) * self.dtype.itemsize

    def __getitem__(self, ids: object) -> np.ndarray:
        index = np.asarray(ids, np.int64)
        flat = index.reshape(-1)
        if flat.size and (flat.min() < 0 or flat.max() >= self.shape[0]):
            raise IndexError(
                f"row ids must be in [0, {self.shape[0]}) for "
                f"{self._entry.name}, got {flat.min()}..{flat.max()}"
            )
        out = np.empty((flat.size, self._row_bytes), np.uint8)
        for i, row in enumerate(flat):
            self._files.readinto(
                self._entry.file,
                self._entry.offset + int(row) * self._row_bytes,
                memoryview(out[i]),
            )
        return out.view(self.dtype).reshape(*index.shape, *self.shape[1:])


def pread_into(fd: int, target: memoryview, offset: int) -> int:
    """One positioned read into `target`; the count read (0 at end of file)."""
    if hasattr(os, "preadv"):
        return os.preadv(fd, [target], offset)
    # Windows has neither preadv nor pread: seek and read under one lock, since the file
    # position is shared by every user of the descriptor.
    with _SEEK_LOCK:
        os.lseek(fd, offset, os.SEEK_SET)
        data = os.read(fd, len(target))
    target[: len(data)] = data
    return len(data)


def _reopen_direct(fd: int) -> int | None:
    if not hasattr(os, "O_DIRECT") or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


def _close_all(fds: dict[str, int], direct: dict[str, int | None]) -> None:
    for fd in [*fds.values(), *direct.values()]:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
    fds.clear()
    direct.clear()


def drop_pages(array: np.ndarray) -> bool:
    """Let the kernel drop the resident pages of `array`'s memory map (MADV_DONTNEED): its
    bytes are the file's, so a later read faults them back in from the page cache, unchanged.
    Called once a runtime has made its own copy (ONNX Runtime's pre-packed weights), so the
    process holds the weights once, not twice. False when `array` is not a map of ours."""
    base: object = array
    while isinstance(base, np.ndarray | memoryview):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    if not isinstance(base, mmap.mmap) or base.closed or not hasattr(mmap, "MADV_DONTNEED"):
        return False
    base.madvise(mmap.MADV_DONTNEED)
    return True
