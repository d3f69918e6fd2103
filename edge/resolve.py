"""Turn what a user typed (a model name, a GGUF file, a Hugging Face folder, a package) into
a package directory, pulling and exporting on first use and caching the result.

A cached package records the sha256 of the source it was exported from (the manifest's
`exporter.source_sha256`); a source whose bytes changed since (a repaired pull, an edited file
with its mtime restored) gets a fresh export instead of the stale package. Hashes are remembered
by file fingerprint (`edge.hashing`), so an unchanged multi-GB source is not re-read on each run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from edge.errors import EdgeError, PackageError, UnknownModelError
from edge.format import MANIFEST_FILE, read_manifest
from edge.hashing import source_sha256
from edge.models.registry import DEFAULT_MODEL, REGISTRY
from edge.paths import packages_dir


class ExportUnavailableError(EdgeError, RuntimeError):
    """The model needs exporting but the export extras (onnx, gguf) are not installed."""


def resolve_package(model: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Path:
    """The package directory for `model` (default: SmolLM2-135M-Instruct)."""
    model = model or DEFAULT_MODEL
    path = Path(model).expanduser()
    if path.exists():
        if (path / MANIFEST_FILE).is_file():
            return path
        if path.is_dir() and not (path / "config.json").is_file():
            raise PackageError(
                f"{path} is neither an edge package (no {MANIFEST_FILE}) nor a "
                "Hugging Face folder (no config.json)"
            )
        return _export_cached(path, _cache_key(path), progress)
    name = str(model)
    if name in REGISTRY:
        from edge.models.pull import pull

        return _export_cached(pull(name, progress=progress), name, progress)
    raise UnknownModelError(
        f"{name!r} is not a known model or an existing path. Known models: "
        f"{', '.join(sorted(REGISTRY))}; or give a GGUF file, a Hugging Face folder or an "
        "edge package directory"
    )


def _cache_key(path: Path) -> str:
    """Same source file (path, size, mtime) -> same cached package."""
    st = path.stat()
    digest = hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return f"{path.stem}-{digest.hexdigest()[:12]}"


def _export_cached(source: Path, key: str, progress: bool) -> Path:
    """The cached package for `source`, exported again unless it was made from these bytes
    with the default export of edge's version (`exporters.defaults`)."""
    target = packages_dir() / key
    recorded = _recorded_export(target)
    made_from_source = recorded is not None and recorded[0] == source_sha256(source)
    try:
        from exporters.defaults import default_export_config
        from exporters.export import export
    except ImportError as exc:
        if made_from_source:  # a runtime-only install uses what an earlier export made
            return target
        raise ExportUnavailableError(
            f"{source} must be exported to an edge package first, which needs the export "
            f"extras: pip install 'edge[export]' ({exc})"
        ) from exc
    config = default_export_config(source)
    if made_from_source and recorded is not None and recorded[1] == _record(config):
        return target
    return export(source, target, config=config, overwrite=True, progress=progress)


def _record(config: object) -> object:
    """`config` as the manifest records it (JSON: tuples become lists)."""
    from dataclasses import asdict

    return json.loads(json.dumps(asdict(config)))  # type: ignore[call-overload]


def _recorded_export(package: Path) -> tuple[str, object] | None:
    """(source sha256, export config) a cached package was made with; None if unknown."""
    if not (package / MANIFEST_FILE).is_file():
        return None
    try:
        exporter = read_manifest(package).exporter
    except (PackageError, OSError):
        return None
    sha = exporter.get("source_sha256")
    return (sha, exporter.get("config")) if isinstance(sha, str) else None
