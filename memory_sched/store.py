"""Bytes on disk: read one part's weights into a preallocated buffer with large sequential reads.

A part's tensors lie at aligned offsets in its own weight file, so reading a part is one (or,
for a tied head or a half-block, a few) contiguous `preadv`s straight into the buffer; the
tensors are then zero-copy numpy views of that buffer. Cold reads reach the disk's sequential
speed only with large requests (8 MiB chunks by default); a default mmap pages in much smaller
pieces. With `direct=True` reads bypass the page cache (O_DIRECT), so streaming a model larger
than memory does not evict everything else; where the filesystem refuses O_DIRECT (tmpfs) the
store falls back to buffered reads and records why in `direct_fallback`.

>>> store = WeightStore.from_package(root)
>>> buffer = allocate_buffer(store.buffer_bytes("block.3"))
>>> weights = store.read_into("block.3", buffer)
>>> weights["blk.3.attn_qkv.weight"].shape, weights.stats.seconds
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import numpy as np

from edge.errors import ConfigError, PackageError, StreamReadError
from edge.format import DTYPES, TENSOR_ALIGNMENT, PartEntry, TensorEntry, read_manifest
from edge.package_files import PackageFiles, pread_into

# O_DIRECT needs the file offset, the length and the buffer address aligned to the logical
# block size; 4096 covers every common device (and is the page size mmap buffers start on).
DIRECT_ALIGNMENT = 4096
DEFAULT_CHUNK_BYTES = 8 << 20
# Tensors of one file closer than this are read in one request. Within a part the only gaps
# that small are the writer's alignment padding; a larger gap holds another unit's tensors (the
# other half of a split block), and reading it would cost buffer memory, which is what halves
# exist to save (measured: SmolLM2's MLP half read its attention weights too under 1 MiB).
DEFAULT_MAX_GAP = TENSOR_ALIGNMENT


def _round_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def allocate_buffer(nbytes: int) -> np.ndarray:
    """A zeroed uint8 buffer of at least `nbytes` on a page boundary (anonymous mmap), so it
    can take O_DIRECT reads; its size is rounded up to `DIRECT_ALIGNMENT`."""
    if nbytes < 0:
        raise ConfigError(f"buffer size must be >= 0 bytes, got {nbytes}")
    region = mmap.mmap(-1, max(_round_up(nbytes, DIRECT_ALIGNMENT), DIRECT_ALIGNMENT))
    return np.frombuffer(region, dtype=np.uint8)


@dataclass(frozen=True)
class Extent:
    """One contiguous read: bytes [start, end) of `file`, landing at `buffer_offset`."""

    file: str
    start: int
    end: int
    buffer_offset: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class PartLayout:
    """How a part maps from disk to a buffer: its reads, and where each tensor lands."""

    name: str
    extents: tuple[Extent, ...]
    tensors: tuple[tuple[TensorEntry, int], ...]  # (entry, offset in the buffer)
    buffer_bytes: int

    @property
    def nbytes(self) -> int:
        """Bytes read from disk for this part (tensors plus the small gaps between them)."""
        return sum(e.nbytes for e in self.extents)


def plan_layout(part: PartEntry, max_gap: int = DEFAULT_MAX_GAP) -> PartLayout:
    """Group a part's tensors into per-file extents; each extent starts on an aligned buffer
    offset and an aligned file offset, so the same layout works with and without O_DIRECT."""
    names = [t.name for t in part.tensors]
    if len(set(names)) != len(names):
        raise PackageError(f"part {part.name!r} lists a tensor twice: {sorted(names)}")
    by_file: dict[str, list[TensorEntry]] = {}
    for tensor in part.tensors:
        by_file.setdefault(tensor.file, []).append(tensor)
    extents: list[Extent] = []
    placed: list[tuple[TensorEntry, int]] = []
    cursor = 0
    for file, tensors in by_file.items():
        for group in _coalesce(sorted(tensors, key=lambda t: t.offset), max_gap):
            start = group[0].offset // DIRECT_ALIGNMENT * DIRECT_ALIGNMENT
            end = max(t.offset + t.nbytes for t in group)
            extents.append(Extent(file, start, end, cursor))
            placed.extend((t, cursor + t.offset - start) for t in group)
            cursor += _round_up(end - start, DIRECT_ALIGNMENT)
    order = {name: i for i, name in enumerate(names)}
    placed.sort(key=lambda item: order[item[0].name])
    return PartLayout(part.name, tuple(extents), tuple(placed), cursor)


def _coalesce(tensors: list[TensorEntry], max_gap: int) -> list[list[TensorEntry]]:
    groups: list[list[TensorEntry]] = []
    end = -1
    for tensor in tensors:
        if groups and tensor.offset - end <= max_gap:
            groups[-1].append(tensor)
        else:
            groups.append([tensor])
        end = max(end, tensor.offset + tensor.nbytes)
    return groups


def tensor_view(buffer: np.ndarray, offset: int, entry: TensorEntry) -> np.ndarray:
    """A read-only typed view of `entry` at `offset` of `buffer` (4-bit rows stay packed,
    exactly as `edge.package.Package.tensor` presents them)."""
    storage, bits = DTYPES[entry.dtype]
    shape = entry.shape
    if bits < 8 and shape:
        shape = (*shape[:-1], (shape[-1] * bits + 7) // 8)
    view = buffer[offset : offset + entry.nbytes].view(storage).reshape(shape)
    view.flags.writeable = False
    return view


@dataclass(frozen=True)
class ReadStats:
    """One part read: bytes from disk, duration, and `time.perf_counter` start/end."""

    part: str
    nbytes: int
    seconds: float
    start: float
    end: float
    direct: bool

    @property
    def throughput(self) -> float:
        """Bytes per second of this read."""
        return self.nbytes / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class PartWeights:
    """A part's tensors as views of the buffer it was read into: valid until that buffer is
    reused (after `Prefetcher.release`, or the next `read_into` with the same buffer)."""

    part: str
    tensors: Mapping[str, np.ndarray]
    stats: ReadStats

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.tensors[name]
        except KeyError:
            raise KeyError(
                f"part {self.part!r} has no tensor {name!r}; it has {sorted(self.tensors)}"
            ) from None


class WeightStore:
    """Reads parts of a package into caller-owned buffers; thread-safe (positioned reads).

    `source` is the package's open files (`Package.files`: reads then come from the files the
    loader verified, whatever happens to their paths) or its directory. `parts` are the units
    to read: manifest parts or halves of blocks (`units.split_block`).
    """

    def __init__(
        self,
        source: PackageFiles | str | os.PathLike[str],
        parts: Iterable[PartEntry],
        direct: bool = False,
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        max_gap: int = DEFAULT_MAX_GAP,
        drop_page_cache: bool = True,
    ) -> None:
        if chunk_bytes <= 0 or chunk_bytes % DIRECT_ALIGNMENT:
            raise ConfigError(
                f"chunk_bytes must be a positive multiple of {DIRECT_ALIGNMENT}, got {chunk_bytes}"
            )
        parts = tuple(parts)
        if not isinstance(source, PackageFiles):
            if not Path(source).is_dir():
                raise PackageError(f"{source} is not a directory, so not an edge package")
            source = PackageFiles(source, sorted({t.file for p in parts for t in p.tensors}))
        self.files = source
        self.root = source.root
        self.chunk_bytes = chunk_bytes
        self.drop_page_cache = drop_page_cache
        self._layouts: dict[str, PartLayout] = {}
        for part in parts:
            if part.name in self._layouts:
                raise PackageError(f"part {part.name!r} given twice to the WeightStore")
            self._layouts[part.name] = plan_layout(part, max_gap)
        self._direct = direct
        self._fallback: str | None = None
        if direct and not hasattr(os, "O_DIRECT"):
            self._fall_back("this platform has no O_DIRECT")
        self._lock = threading.Lock()

    @classmethod
    def from_package(
        cls,
        root: str | os.PathLike[str],
        names: Iterable[str] | None = None,
        direct: bool = False,
        **options: object,
    ) -> WeightStore:
        """A store over a package's parts (all of them, or those `names`)."""
        manifest = read_manifest(root)
        parts = manifest.parts if names is None else tuple(manifest.part(n) for n in names)
        return cls(root, parts, direct, **options)  # type: ignore[arg-type]

    # ---- the layout -------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._layouts)

    def layout(self, name: str) -> PartLayout:
        try:
            return self._layouts[name]
        except KeyError:
            raise PackageError(
                f"the WeightStore has no part {name!r}; it has {list(self._layouts)}"
            ) from None

    def spans(self, name: str) -> tuple[Extent, ...]:
        """The byte spans read for part `name`, per file."""
        return self.layout(name).extents

    def buffer_bytes(self, name: str) -> int:
        """The buffer size part `name` needs (its extents, each rounded up for O_DIRECT)."""
        return self.layout(name).buffer_bytes

    def max_buffer_bytes(self, names: Iterable[str] | None = None) -> int:
        """The buffer size that fits every part in `names` (default: all): the pool's size."""
        return max((self.buffer_bytes(n) for n in (names or self._layouts)), default=0)

    @property
    def direct(self) -> bool:
        """Whether reads bypass the page cache now (False after a fallback)."""
        return self._direct

    @property
    def direct_fallback(self) -> str | None:
        """Why O_DIRECT was asked for but is not used, or None."""
        return self._fallback

    def _fall_back(self, reason: str) -> None:
        self._direct = False
        self._fallback = reason

    # ---- reading ----------------------------------------------------------------------------

    def read(self, name: str) -> PartWeights:
        """Read part `name` into a fresh buffer (tests and one-off use; streaming reuses)."""
        return self.read_into(name, allocate_buffer(self.buffer_bytes(name)))

    def read_into(self, name: str, buffer: np.ndarray) -> PartWeights:
        """Read part `name` into `buffer` and return typed views of its tensors.

        Raises `StreamReadError` naming the part and file on a short read or an I/O error.
        """
        layout = self.layout(name)
        self._check_buffer(layout, buffer)
        view = memoryview(buffer)
        start = time.perf_counter()
        direct = self._direct
        nbytes = sum(self._read_extent(name, e, view, self._direct) for e in layout.extents)
        end = time.perf_counter()
        direct = direct and self._direct  # False when this read fell back to buffered
        tensors = {t.name: tensor_view(buffer, off, t) for t, off in layout.tensors}
        stats = ReadStats(name, nbytes, end - start, start, end, direct)
        return PartWeights(name, MappingProxyType(tensors), stats)

    def _check_buffer(self, layout: PartLayout, buffer: np.ndarray) -> None:
        if not (
            isinstance(buffer, np.ndarray)
            and buffer.dtype == np.uint8
            and buffer.ndim == 1
            and buffer.flags.c_contiguous
            and buffer.flags.writeable
        ):
            raise ConfigError(
                "a read buffer must be a writable contiguous 1-D uint8 array "
                "(use memory_sched.store.allocate_buffer)"
            )
        if buffer.nbytes < layout.buffer_bytes:
            raise ConfigError(
                f"buffer of {buffer.nbytes} bytes is too small for part "
                f"{layout.name!r}, which needs {layout.buffer_bytes}"
            )
        if self._direct and buffer.ctypes.data % DIRECT_ALIGNMENT:
            raise ConfigError(
                f"O_DIRECT needs a buffer aligned to {DIRECT_ALIGNMENT} bytes; "
                "use memory_sched.store.allocate_buffer"
            )

    def _read_extent(self, part: str, extent: Extent, view: memoryview, direct: bool) -> int:
        path = self.root / extent.file
        fd = self._descriptor(part, extent.file, direct)
        if fd is None:  # O_DIRECT refused at open: the store is buffered from now on
            return self._read_extent(part, extent, view, False)
        try:
            got = self._read_span(fd, extent, view, direct)
            if got < extent.nbytes:
                size = os.fstat(fd).st_size
                raise StreamReadError(
                    f"part {part!r}: weight file {path} is truncated: it has {size} bytes but "
                    f"the part needs bytes [{extent.start}, {extent.end}) (read {got} of "
                    f"{extent.nbytes}); re-export or re-pull the package"
                )
            if not direct and self.drop_page_cache and hasattr(os, "posix_fadvise"):
                # Streaming would otherwise fill the page cache with the whole model.
                os.posix_fadvise(fd, extent.start, extent.nbytes, os.POSIX_FADV_DONTNEED)
            return got
        except OSError as exc:
            if not (direct and exc.errno == errno.EINVAL):
                raise StreamReadError(
                    f"part {part!r}: reading weight file {path} failed at "
                    f"bytes [{extent.start}, {extent.end}): {exc}"
                ) from exc
            refused = exc
        # Some filesystems accept O_DIRECT at open and refuse it at the first read.
        self._refuse_direct(path, refused)
        return self._read_extent(part, extent, view, False)

    def _descriptor(self, part: str, name: str, direct: bool) -> int | None:
        """The file's open descriptor; with `direct`, its O_DIRECT twin (None if refused)."""
        try:
            if not direct:
                return self.files.fd(name)
            fd = self.files.direct_fd(name)
        except PackageError as exc:
            raise StreamReadError(f"part {part!r}: {exc}") from exc
        if fd is None:
            self._refuse_direct(self.root / name, OSError(errno.EINVAL, "refused"))
        return fd

    def _refuse_direct(self, path: Path, exc: OSError) -> None:
        with self._lock:
            if self._fallback is None:
                self._fall_back(
                    f"O_DIRECT refused for {path} ({exc.strerror}): the "
                    "filesystem does not support it (tmpfs?); reading buffered"
                )

    def _read_span(self, fd: int, extent: Extent, view: memoryview, direct: bool) -> int:
        """Read the extent in `chunk_bytes` pieces; returns the bytes received (EOF stops it).

        O_DIRECT reads whole aligned blocks, so the request is rounded up; at the end of the
        file the kernel returns a short, unaligned count, which ends the loop.
        """
        want = extent.nbytes
        request = _round_up(want, DIRECT_ALIGNMENT) if direct else want
        target = view[extent.buffer_offset : extent.buffer_offset + request]
        got = 0
        while got < request:
            count = pread_into(
                fd, target[got : got + min(self.chunk_bytes, request - got)], extent.start + got
            )
            if count == 0:
                break
            got += count
            if direct and count % DIRECT_ALIGNMENT:
                break
        return min(got, want)
