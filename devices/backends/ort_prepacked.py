"""ONNX Runtime's pre-packed weights kept in edge's cache and memory-mapped back.

ONNX Runtime re-lays every constant matrix into its kernels' format when a session is built
(`MatMulNBits`' int4 blocks, MLAS's packed float matrices) and keeps that copy on the heap. A
resident model thus costs the packing transient (the weights read from our maps plus the copy
being built: 2.6 GB for a 1 GB int4 package) and, once loaded, anonymous memory the kernel
can never reclaim. ONNX Runtime can instead write the packed copy into a file beside an
optimized model (`session.save_external_prepacked_constant_initializers`) and, when a session
is built from that model, map it: later loads skip the packing, peak near the packed size,
and the pages are the page cache's (reclaimable, shared between processes), as llama.cpp's
mapped GGUF is.

The data file holds the original matrices too: ONNX Runtime hashes them at load to match each
packed copy to its source (a packed copy whose source differs is packed again), so they cannot
be left out. A store takes about twice its package's size on disk.

A store holds one segment's optimized model and its data file under
`cache_dir()/prepacked/KEY`, KEY naming everything that decides the bytes: the merged graph,
the sha256 of every package file it reads, ONNX Runtime's version, the CPU's flags (MLAS
packs per instruction set) and the session's optimization settings. The files are written by
this machine from a verified package and remembered by their sha256 (`edge.hashing`): a file
changed afterwards is hashed again, found different and rebuilt, never loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from edge.format import MANIFEST_FILE, sha256_file
from edge.hashing import file_sha256
from edge.paths import cache_dir, pid_alive
from edge.stamps import read_stamp, write_stamp

log = logging.getLogger("edge.devices")

MODEL_FILE = "segment.onnx"
DATA_FILE = "segment.data"
RECORD_FILE = "record.json"
STORE_VERSION = 1
# Initializers smaller than this stay inside the optimized model (norm weights, biases).
EXTERNAL_MIN_BYTES = 1024


def cpu_flags() -> str:
    """The first CPU's feature flags as /proc/cpuinfo lists them (MLAS picks its packing
    per instruction set), or the platform's name where there is no /proc."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.strip() in ("flags", "Features"):
                return " ".join(sorted(value.split()))
    return platform.processor() or platform.machine()


def store_key(model: bytes, files: Sequence[tuple[str, str]], settings: dict[str, Any]) -> str:
    """What decides a store's bytes: the graph, each package file's (name, sha256) it reads,
    the runtime's version, the CPU and the session's settings."""
    digest = hashlib.sha256()
    digest.update(hashlib.sha256(model).digest())
    head = {
        "version": STORE_VERSION,
        "onnxruntime": ort.__version__,
        "machine": platform.machine(),
        "cpu": cpu_flags(),
        "files": sorted(files),
        "settings": settings,
    }
    digest.update(json.dumps(head, sort_keys=True).encode())
    return digest.hexdigest()[:32]


@dataclass(frozen=True)
class PackageRef:
    """The package a store was built from: its folder and its manifest's sha256. A store
    whose package is gone or changed can never be used again."""

    root: Path
    manifest_sha256: str

    def record(self) -> dict[str, str]:
        return {"package": str(self.root), "manifest": self.manifest_sha256}

    @staticmethod
    def current(record: dict[str, Any]) -> bool:
        """Whether the package `record` names is still there, unchanged."""
        try:
            manifest = Path(record["package"]) / MANIFEST_FILE
            return file_sha256(manifest) == record["manifest"]
        except (OSError, KeyError, TypeError):
            return False


def prune(folder: Path) -> None:
    """Remove the stores under `folder` whose package is gone or changed, and the work folders
    of builds whose process died."""
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith("."):
            pid = entry.name.rsplit(".", 2)[-2] if entry.name.endswith(".tmp") else ""
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)
            continue
        record = read_stamp(entry / RECORD_FILE)
        if not isinstance(record, dict) or not PackageRef.current(record):
            log.info("removing %s: its package is gone or changed", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _runtime_record() -> dict[str, str]:
    """What a store was packed by: this ONNX Runtime on this CPU (also in its key)."""
    cpu = hashlib.sha256(f"{platform.machine()} {cpu_flags()}".encode()).hexdigest()[:16]
    return {"onnxruntime": ort.__version__, "cpu": cpu}


def stored_for(root: Path) -> bool:
    """Whether the cache holds a store built from the package at `root` as it is now, by
    this ONNX Runtime on this CPU (what the planner tells a user about the next load)."""
    folder = cache_dir() / "prepacked"
    if not folder.is_dir():
        return False
    package, runtime = Path(root).resolve(), _runtime_record()
    for entry in folder.iterdir():
        record = read_stamp(entry / RECORD_FILE)
        if (
            isinstance(record, dict)
            and isinstance(record.get("package"), str)
            and Path(record["package"]).resolve() == package
            and all(record.get(k) == v for k, v in runtime.items())
            and PackageRef.current(record)
        ):
            return True
    return False


@dataclass(frozen=True)
class PrepackedStore:
    """One segment's optimized model with its packed weights, under `root`."""

    root: Path

    @classmethod
    def for_key(cls, key: str) -> PrepackedStore:
        return cls(cache_dir() / "prepacked" / key)

    @property
    def model_path(self) -> Path:
        return self.root / MODEL_FILE

    def valid(self) -> bool:
        """Whether both files are here and hash to what was recorded when they were built."""
        record = read_stamp(self.root / RECORD_FILE)
        if not isinstance(record, dict) or record.get("version") != STORE_VERSION:
            return False
        try:
            return all(
                isinstance(record.get(name), str) and file_sha256(self.root / name) == record[name]
                for name in (MODEL_FILE, DATA_FILE)
            )
        except OSError:
            return False

    def build(
        self,
        model: bytes,
        options: ort.SessionOptions,
        providers: Sequence[Any],
        weights: Callable[[], tuple[list[str], list[np.ndarray]]],
        package: PackageRef,
    ) -> None:
        """Build a session from `model` and the package's `weights` (names, arrays) that
        writes the optimized model and the packed weights into a fresh folder, record both
        files' sha256 and the package they came from, then move the folder into place (a
        reader sees a whole store or none). Stores of packages since removed or changed are
        removed first."""
        prune(self.root.parent)
        work = self.root.with_name(f".{self.root.name}.{os.getpid()}.tmp")
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            options.optimized_model_filepath = str(work / MODEL_FILE)
            # ONNX Runtime warns that a model optimized at this level may hold this machine's
            # kernel choices: the store's key holds the CPU's flags and the runtime's version.
            options.log_severity_level = 3
            for key, value in (
                ("session.optimized_model_external_initializers_file_name", DATA_FILE),
                ("session.optimized_model_external_initializers_min_size_in_bytes", "1024"),
                ("session.save_external_prepacked_constant_initializers", "1"),
            ):
                options.add_session_config_entry(key, value)
            names, arrays = weights()
            if names:
                options.add_external_initializers(
                    names, [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays]
                )
            session = ort.InferenceSession(model, options, providers=list(providers))
            del session, arrays
            if not (work / DATA_FILE).is_file():  # nothing large: no use mapping it
                raise OSError("ONNX Runtime wrote no external data file")
            record: dict[str, Any] = {
                "version": STORE_VERSION,
                **package.record(),
                **_runtime_record(),
            }
            for name in (MODEL_FILE, DATA_FILE):
                with open(work / name, "rb+") as fh:
                    os.fsync(fh.fileno())
                record[name] = sha256_file(work / name)
            if not write_stamp(work / RECORD_FILE, record):
                raise OSError(f"cannot write {work / RECORD_FILE}")
            shutil.rmtree(self.root, ignore_errors=True)
            os.replace(work, self.root)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def open(self, options: ort.SessionOptions, providers: Sequence[Any]) -> ort.InferenceSession:
        """A session on the stored model: packed weights mapped, nothing packed again. The
        graph is already optimized; optimizing it again would only cost time."""
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        return ort.InferenceSession(str(self.model_path), options, providers=list(providers))
