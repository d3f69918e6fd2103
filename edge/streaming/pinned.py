"""Pinned parts: read once into memory the process owns, each tensor exactly once.

Read rather than memory-mapped: mapped pages are the kernel's to keep or drop, and would
count against the budget only while it chooses to keep them. A tensor two parts share (a tied
embedding is the head's output matrix) is read once and viewed by both.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

import numpy as np
from tqdm import tqdm

from devices.spec_forward.weights import (
    PREFILL_SUFFIXES,
    PartWeights,
    part_weights,
)
from edge.errors import PackageError, StreamReadError
from edge.format import DTYPES, TensorEntry, storage_shape
from edge.package import Package
from edge.package_files import PackageFiles


def read_tensor(files: PackageFiles, entry: TensorEntry) -> np.ndarray:
    """The tensor's bytes (uint8) in a fresh array; a short file raises `StreamReadError`."""
    out = np.empty(entry.nbytes, np.uint8)
    try:
        files.readinto(entry.file, entry.offset, memoryview(out))
    except PackageError as exc:
        raise StreamReadError(f"tensor {entry.name}: {exc}") from exc
    if hasattr(os, "posix_fadvise"):  # the bytes are ours now; the page cache copy is not
        os.posix_fadvise(files.fd(entry.file), entry.offset, entry.nbytes, os.POSIX_FADV_DONTNEED)
    return out


def _typed(raw: np.ndarray, entry: TensorEntry) -> np.ndarray:
    """One entry's view of shared bytes (two entries may type the same bytes differently:
    the int4 embedding rows are the head's MatMulNBits blocks)."""
    storage, _ = DTYPES[entry.dtype]
    return raw[: entry.nbytes].view(storage).reshape(storage_shape(entry))


def load_pinned(
    package: Package, names: Iterable[str], progress: bool = True
) -> dict[str, PartWeights]:
    """Typed weights of the named parts, read from the package (progress on stderr)."""
    wanted = set(names)
    parts = [p for p in package.manifest.parts if p.name in wanted]
    by_location: dict[tuple[str, int], np.ndarray] = {}
    # ONNX Runtime's int8 prefill weights are not what this forward multiplies by.
    tensors = {
        p.name: [t for t in p.tensors if not t.name.endswith(PREFILL_SUFFIXES)] for p in parts
    }
    total = sum({(t.file, t.offset): t.nbytes for ts in tensors.values() for t in ts}.values())
    out: dict[str, PartWeights] = {}
    with tqdm(
        total=total,
        unit="B",
        unit_scale=True,
        desc="load resident parts",
        disable=not progress,
        leave=False,
    ) as bar:
        for part in parts:
            arrays = {}
            for t in tensors[part.name]:
                key = (t.file, t.offset)
                if key not in by_location:
                    by_location[key] = read_tensor(package.files, t)
                    bar.update(t.nbytes)
                arrays[t.name] = _typed(by_location[key], t)
            out[part.name] = part_weights(package.spec, part, arrays, package.manifest.quant)
    return out
