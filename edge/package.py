"""Open an edge package for running: the one place a package's manifest and files are trusted.

`open_package` resolves every name in the manifest inside the package directory, opens every
listed file once, checks sizes (and sha256 when needed), and refuses graphs that could make ONNX
Runtime read anything but the manifest's own tensors. Everything a run reads afterwards comes
through the `Package`'s open descriptors.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edge import format as fmt
from edge.errors import IntegrityError, PackageError
from edge.format import Manifest, PartEntry, TensorEntry
from edge.graph_trust import check_graphs
from edge.manifest_checks import check_manifest
from edge.package_files import PackageFiles, TensorRows
from edge.paths import cache_dir
from edge.stamps import fingerprint, read_stamp, settled, write_stamp

Verify = Literal["auto", "full", "sizes"]


@dataclass
class Package:
    """A verified package on disk, its files open. Resident tensors are memory-mapped through
    those descriptors (the verified files, whatever happens to their paths later); the
    engines call `check_files` before each step, so a file that shrinks under a run is a typed
    error rather than a fault in a mapped page."""

    root: Path
    manifest: Manifest
    files: PackageFiles = field(repr=False)
    # Every file's sha256 was checked against the manifest (verify "auto" or "full"), so the
    # manifest's hashes name the bytes (what a derived cache may be keyed by).
    hashes_checked: bool = False
    _maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _mapped_files: dict[str, int] = field(default_factory=dict, repr=False)  # name -> size

    @property
    def spec(self) -> fmt.ModelSpec:
        return self.manifest.spec

    def graph_bytes(self, part: PartEntry, step: int | None = None, prefill: bool = False) -> bytes:
        """The part's graph; for fixed-shape (NPU) packages, the one for `step` tokens; with
        `prefill`, its multi-token graph when it has one."""
        if step is not None:
            graph = dict(part.static_graphs)[step]
        else:
            graph = part.prefill_graph if prefill and part.prefill_graph else part.graph
        return self.files.read(graph)

    def tokenizer_json(self) -> str:
        name = self.manifest.tokenizer.file
        try:
            return self.files.read(name).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PackageError(f"package {self.root}: {name} is not UTF-8 text") from exc

    @property
    def static_steps(self) -> tuple[int, ...]:
        """Step lengths of a fixed-shape package's graphs; () when graphs take any length."""
        static = self.manifest.quant.static
        return tuple(sorted(static.chunks)) if static else ()

    def tensor(self, entry: TensorEntry) -> np.ndarray:
        """A read-only memory map of `entry` (no copy; the OS pages it in on use)."""
        if entry.name not in self._maps:
            self._maps[entry.name] = self.files.map(entry)
            self._mapped_files[entry.file] = next(
                f.size for f in self.manifest.files if f.path == entry.file
            )
        return self._maps[entry.name]

    def rows(self, entry: TensorEntry) -> TensorRows:
        """`entry` as rows read on demand, never mapped (a streamed run's embedding)."""
        return self.files.rows(entry)

    def check_files(self) -> None:
        """`IntegrityError` naming a file that no longer has its verified size."""
        self._check_sizes({f.path: f.size for f in self.manifest.files})

    def check_mapped(self) -> None:
        """`check_files` for the memory-mapped files only (cheap enough for every step: a
        mapped page past a file's new end would fault instead of raising)."""
        self._check_sizes(self._mapped_files)

    def _check_sizes(self, sizes: dict[str, int]) -> None:
        for name, expected in sizes.items():
            size = self.files.size(name)
            if size != expected:
                raise IntegrityError(
                    f"{name} in {self.root} changed while in use: it has {size} bytes, the "
                    f"manifest says {expected}; re-export or re-pull the package"
                )

    def close(self) -> None:
        """Close the files; arrays mapped earlier stay valid until they are dropped."""
        self._maps.clear()
        self.files.close()


def open_package(path: str | os.PathLike[str], verify: Verify = "auto") -> Package:
    """Read and check a package.

    `verify`: "sizes" checks file sizes only (catches truncation, costs nothing); "full" also
    hashes every file; "auto" hashes on first load and whenever a file changed since the last
    successful check (by inode, ctime, size and mtime, remembered in edge's cache), so later
    loads start instantly.
    """
    if verify not in ("auto", "full", "sizes"):
        raise ValueError(f"verify={verify!r}; allowed: 'auto', 'full', 'sizes'")
    root = Path(path).resolve()
    if not root.is_dir():
        raise PackageError(f"{root} is not a directory, so not an edge package")
    if not (root / fmt.MANIFEST_FILE).is_file():
        raise PackageError(f"{root} is not an edge package: it has no {fmt.MANIFEST_FILE}")
    files = PackageFiles(root, [fmt.MANIFEST_FILE])
    try:
        size = min(files.size(fmt.MANIFEST_FILE), fmt.MAX_MANIFEST_BYTES + 1)
        manifest = fmt.manifest_from_bytes(
            files.read(fmt.MANIFEST_FILE, 0, size), str(root / fmt.MANIFEST_FILE)
        )
        check_manifest(manifest)
        files.add(f.path for f in manifest.files)
        package = Package(root, manifest, files)
        package.check_files()
        stamp = _stamp_path(root)
        state = {name: fingerprint(files.stat(name)) for name in files.names}
        if verify == "full" or (verify == "auto" and read_stamp(stamp) != state):
            started = time.time_ns()
            _check_hashes(files, manifest)
            if settled(list(state.values()), started):
                write_stamp(stamp, state)
        package.hashes_checked = verify != "sizes"
        check_graphs(manifest, files.read)
    except BaseException:
        files.close()
        raise
    return package


def _check_hashes(files: PackageFiles, manifest: Manifest) -> None:
    for entry in manifest.files:
        actual = files.sha256(entry.path)
        if actual != entry.sha256:
            raise IntegrityError(
                f"{entry.path} in {files.root} is corrupted: sha256 {actual} differs from the "
                f"manifest's {entry.sha256}"
            )


def _stamp_path(root: Path) -> Path:
    key = hashlib.sha256(str(root).encode()).hexdigest()[:24]
    return cache_dir() / "verified" / f"{key}.json"
