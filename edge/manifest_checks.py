"""The checks across a manifest's entries that make it a runnable package (`open_package` and
the exporter both run them: what a load would refuse is never written)."""

from __future__ import annotations

from typing import Any

from edge.errors import PackageError
from edge.format import MANIFEST_FILE, Manifest, PartEntry


def check_manifest(manifest: Manifest) -> None:
    """The checks across entries that make a manifest a runnable package.

    Every file a part or the tokenizer reads is listed in `files` (so it is hashed), every
    tensor lies inside its listed file, names are unique, and the parts are one embedding,
    `spec.num_layers` blocks in order, and one head.
    """
    listed = {f.path: f.size for f in manifest.files}
    if len(listed) != len(manifest.files):
        raise PackageError("files[] lists a file twice")
    if MANIFEST_FILE in listed:
        raise PackageError(f"files[] may not list {MANIFEST_FILE} itself")

    def require(name: str, what: str) -> int:
        if name not in listed:
            raise PackageError(
                f"{what} reads {name!r}, which files[] does not list (every "
                "file a package reads must be listed and hashed)"
            )
        return listed[name]

    require(manifest.tokenizer.file, "the tokenizer")
    names = [p.name for p in manifest.parts]
    if len(set(names)) != len(names):
        raise PackageError(f"a part name appears twice: {names}")
    for part in manifest.parts:
        for graph in part.graph_files:
            require(graph, f"part {part.name}")
        _check_tensors(part, require)
    _check_layers(manifest)


def _check_tensors(part: PartEntry, require: Any) -> None:
    seen: set[str] = set()
    for t in part.tensors:
        if t.name in seen:
            raise PackageError(f"part {part.name} lists tensor {t.name!r} twice")
        seen.add(t.name)
        size = require(t.file, f"tensor {t.name} of part {part.name}")
        if t.offset + t.nbytes > size:
            raise PackageError(
                f"tensor {t.name} of part {part.name} lies at bytes "
                f"[{t.offset}, {t.offset + t.nbytes}) of {t.file}, which has "
                f"{size}: the manifest points past the end of the file"
            )


def _check_layers(manifest: Manifest) -> None:
    kinds = [p.kind for p in manifest.parts]
    blocks = manifest.blocks
    if kinds.count("embed") != 1 or kinds.count("head") != 1:
        raise PackageError(
            f"a package has one embed and one head part; this one has parts "
            f"{[p.name for p in manifest.parts][:8]}"
        )
    if len(blocks) != manifest.spec.num_layers:
        raise PackageError(
            f"the spec has {manifest.spec.num_layers} layers but the package "
            f"has {len(blocks)} block parts"
        )
    indices = [b.block_index for b in blocks]
    if indices != list(range(len(blocks))):
        raise PackageError(
            f"block parts must be numbered 0..{len(blocks) - 1} in order, got {indices[:8]}"
        )
