"""Turn what a user typed (a model name, a GGUF file, a Hugging Face folder, a package) into
a package directory, pulling and exporting on first use and caching the result.

A cached package records the sha256 of the source it was exported from (the manifest's
`exporter.source_sha256`); a source whose bytes changed since (a repaired pull, an edited file
with its mtime restored) gets a fresh export instead of the stale package. Hashes are remembered
by file fingerprint (`edge.hashing`), so an unchanged multi-GB source is not re-read on each run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
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
    found = _locate(model, progress)
    return found if isinstance(found, Path) else _export_cached(*found, progress)


@contextlib.contextmanager
def plannable_package(
    model: str | os.PathLike[str] | None = None, *, progress: bool = True
) -> Iterator[tuple[Path, bool]]:
    """(a package to plan `model` on, whether it is only laid out): the package itself or an
    up-to-date cached export, else the layout its export would write (`exporters.layout`: the
    same parts and tensor sizes, in seconds) in a temporary folder; nothing is exported."""
    found = _locate(model, progress)
    if isinstance(found, Path):
        yield found, False
        return
    source, key = found
    cached = _fresh_export(source, key)
    if cached is not None:
        yield cached, False
        return
    try:
        from exporters.defaults import default_export_config
        from exporters.layout import write_layout
    except ImportError as exc:
        raise _export_unavailable(source, exc) from exc
    with tempfile.TemporaryDirectory(prefix="edge-layout-") as scratch:
        yield write_layout(source, scratch, default_export_config(source), progress), True


def _locate(model: str | os.PathLike[str] | None, progress: bool) -> Path | tuple[Path, str]:
    """A package directory, or (the source to export, its cache key); a registered model is
    pulled first."""
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
        return path, _cache_key(path)
    name = str(model)
    if name in REGISTRY:
        from edge.models.pull import pull

        return pull(name, progress=progress), name
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


def _fresh_export(source: Path, key: str) -> Path | None:
    """The cached package for `source` if it was made from these bytes with the default
    export of edge's version (`exporters.defaults`), or by an earlier export where this
    install cannot export; else None."""
    target = packages_dir() / key
    recorded = _recorded_export(target)
    if recorded is None or recorded[0] != source_sha256(source):
        return None
    try:
        from exporters.defaults import default_export_config
    except ImportError:  # a runtime-only install uses what an earlier export made
        return target
    wanted = default_export_config(source)
    return target if _as_exported(recorded[1], type(wanted)) == _record(wanted) else None


def _as_exported(recorded: object, config_type: type) -> object:
    """A recorded export config with the fields added to `config_type` since it was written
    at their defaults (a new field's default is what earlier exports did), so a package is
    not exported again only because edge learned an option it did not use."""
    if not isinstance(recorded, dict):
        return recorded
    return {**_record(config_type()), **recorded}


def _export_cached(source: Path, key: str, progress: bool) -> Path:
    """The cached package for `source`, exported again unless `_fresh_export` keeps it."""
    cached = _fresh_export(source, key)
    if cached is not None:
        return cached
    try:
        from exporters.defaults import default_export_config
        from exporters.export import export
    except ImportError as exc:
        raise _export_unavailable(source, exc) from exc
    config = default_export_config(source)
    return export(source, packages_dir() / key, config=config, overwrite=True, progress=progress)


def _export_unavailable(source: Path, exc: ImportError) -> ExportUnavailableError:
    return ExportUnavailableError(
        f"{source} must be exported to an edge package first, which needs the export "
        f"extras: pip install 'edge[export]' ({exc})"
    )


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
