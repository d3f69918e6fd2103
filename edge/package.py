"""Open an edge package for running: manifest, integrity checks, graph bytes, mapped weights."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from edge import format as fmt
from edge.errors import PackageError
from edge.format import Manifest, PartEntry, TensorEntry
from edge.paths import cache_dir

Verify = Literal["auto", "full", "sizes"]


@dataclass
class Package:
    """A verified package on disk. Weights are memory-mapped on first use, never copied here."""

    root: Path
    manifest: Manifest
    _maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def spec(self) -> fmt.ModelSpec:
        return self.manifest.spec

    def graph_bytes(self, part: PartEntry, step: int | None = None,
                    prefill: bool = False) -> bytes:
        """The part's graph; for fixed-shape (NPU) packages, the one for `step` tokens; with
        `prefill`, its multi-token graph when it has one."""
        if step is not None:
            graph = dict(part.static_graphs)[step]
        else:
            graph = part.prefill_graph if prefill and part.prefill_graph else part.graph
        path = self.root / graph
        if not path.is_file():
            raise PackageError(f"package {self.root} is missing graph {graph} of {part.name}")
        return path.read_bytes()

    @property
    def static_steps(self) -> tuple[int, ...]:
        """Step lengths of a fixed-shape package's graphs; () when graphs take any length."""
        static = (self.manifest.quantization or {}).get("static")
        return tuple(sorted(static["chunks"])) if static else ()

    def tensor(self, entry: TensorEntry) -> np.ndarray:
        if entry.name not in self._maps:
            self._maps[entry.name] = fmt.map_tensor(self.root, entry)
        return self._maps[entry.name]


def open_package(path: str | os.PathLike[str], verify: Verify = "auto") -> Package:
    """Read and check a package.

    `verify`: "sizes" checks file sizes only (catches truncation, costs nothing); "full" also
    hashes every file; "auto" hashes on first load and whenever a file changed since the last
    successful check (remembered in edge's cache), so later loads start instantly.
    """
    if verify not in ("auto", "full", "sizes"):
        raise ValueError(f"verify={verify!r}; allowed: 'auto', 'full', 'sizes'")
    root = Path(path).resolve()
    manifest = fmt.read_manifest(root)
    stamp = _stamp_path(root)
    state = _file_state(root, manifest)
    hashes = verify == "full" or (verify == "auto" and _read_stamp(stamp) != state)
    fmt.verify_files(root, manifest, hashes=hashes)
    if hashes:
        _write_stamp(stamp, state)
    return Package(root, manifest)


def _stamp_path(root: Path) -> Path:
    key = hashlib.sha256(str(root).encode()).hexdigest()[:24]
    return cache_dir() / "verified" / f"{key}.json"


def _file_state(root: Path, manifest: Manifest) -> dict[str, list[int]]:
    """Size and mtime of every file: if none changed, an earlier full hash still holds."""
    state = {}
    for name in [fmt.MANIFEST_FILE, *(f.path for f in manifest.files)]:
        try:
            st = (root / name).stat()
        except FileNotFoundError:
            return {}
        state[name] = [st.st_size, st.st_mtime_ns]
    return state


def _read_stamp(path: Path) -> dict[str, list[int]] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _write_stamp(path: Path, state: dict[str, list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, path)
