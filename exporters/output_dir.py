"""The output folder of an export: what may be replaced, claimed, swapped in and cleaned up.

An export never deletes what it did not create: the output must be missing, an empty folder, or
(with overwrite) an edge package holding nothing but its own files, and never the folder holding
the source. A missing output is claimed with `mkdir` before the long write, so a folder someone
makes there meanwhile is never replaced. Temporary folders (`.NAME.partial-PID-*`,
`.NAME.old-PID-*`) carry the exporting process's id; the next export into the same folder
finishes what a killed one left, once that process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
import warnings
from pathlib import Path

from edge import format as fmt
from edge.errors import EdgeError, OutputError, PackageError
from edge.paths import pid_alive

# `.NAME.partial-PID-XXXX` (a package being written) and `.NAME.old-PID-XXXX` (the package it
# replaces, until the new one is in place), next to the output NAME.
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)(?:-\w+)?")
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def check_target(source: Path, out_dir: Path, overwrite: bool) -> None:
    """Refuse an output whose replacement could lose anything (see `export`)."""
    if holds(out_dir, source):
        raise PackageError(
            f"{out_dir} is or holds the export's source {source}; choose another output"
        )
    _check_parent(out_dir)
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise PackageError(f"{out_dir} exists and is not a directory; choose another output")
    if out_dir.exists():
        _check_existing(out_dir, overwrite)


def _check_parent(out_dir: Path) -> None:
    """`OutputError` unless the nearest existing ancestor of `out_dir` is a directory."""
    for parent in Path(os.path.abspath(out_dir)).parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise OutputError(
                    f"cannot create {out_dir}: {parent} is not a directory; "
                    "choose an output inside a folder"
                )
            return


def _check_existing(out_dir: Path, overwrite: bool) -> None:
    """An existing directory may be used when empty, or replaced (overwrite) if only a package."""
    if not _listdir(out_dir):
        return
    if not overwrite:
        raise PackageError(
            f"{out_dir} exists and is not empty; --force (overwrite=True in Python) replaces "
            "an edge package there, or choose another output"
        )
    _check_replaceable(out_dir)


def _check_replaceable(folder: Path) -> None:
    """`PackageError` unless `folder` holds an edge package and nothing else."""
    own = _package_files(folder)
    if own is None:
        raise PackageError(
            f"{folder} is not an edge package (no valid {fmt.MANIFEST_FILE}); "
            "overwrite (--force) replaces only an edge package: choose another "
            "output or empty the folder yourself"
        )
    foreign = sorted(set(_listdir(folder)) - own)
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise PackageError(
            f"{folder} holds files that are not part of its edge package "
            f"({shown}); overwrite (--force) replaces only an edge package: "
            "choose another output or move them away"
        )


def _package_files(folder: Path) -> set[str] | None:
    """Names of the regular files of the edge package in `folder` (manifest.json and the files
    it lists); None when `folder` holds no readable manifest."""
    try:
        manifest = fmt.read_manifest(folder)
    except (PackageError, OSError):
        return None
    listed = {fmt.MANIFEST_FILE, *(f.path for f in manifest.files)}
    return {
        e.name for e in _scandir(folder) if e.name in listed and e.is_file(follow_symlinks=False)
    }


def holds(folder: Path, path: Path) -> bool:
    """Whether `path` is `folder` or lies inside it, by name or by identity (symbolic links,
    bind mounts, another spelling of the same path)."""
    try:
        target = folder.stat()
    except OSError:
        return False  # a missing folder holds nothing
    candidates = {Path(os.path.abspath(path)), path.resolve()}
    for start in candidates:
        for p in (start, *start.parents):
            try:
                st = p.stat()
            except OSError:
                continue
            if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
                return True
    return False


def claim(source: Path, out_dir: Path, overwrite: bool, created: list[Path]) -> None:
    """Create `out_dir` (appended to `created`; its parents are made as needed and kept), so
    that nobody else's folder can appear there during the export; one that appeared first is
    checked like any existing output."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(out_dir)
    except FileExistsError:
        check_target(source, out_dir, overwrite)
        return
    created.append(out_dir)


def temp_dir(target: Path, kind: str) -> Path:
    """Create `.NAME.KIND-PID-XXXX` next to `target`: new, and owned by this process."""
    while True:
        path = target.parent / f".{target.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue


def replace_dir(staging: Path, target: Path, overwrite: bool = True) -> None:
    """Move the finished package into place: onto the (empty) folder claimed for it, or, with
    overwrite, in exchange for the edge package there, which survives until the new one is in."""
    try:
        os.rename(staging, target)  # atomic; succeeds only onto a missing or empty directory
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if not _listdir(target):  # systems that rename onto no existing directory (Windows)
        os.rmdir(target)
        os.rename(staging, target)
        return
    if not overwrite:
        raise PackageError(
            f"{target} was filled by someone else during the export, so it was "
            "left as it is; choose another output"
        )
    _check_replaceable(target)  # again: files may have appeared there during the export
    backup = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(target, backup)
    try:
        os.rename(staging, target)
    except BaseException:
        os.rename(backup, target)
        raise
    _remove_package(backup)


def _remove_package(folder: Path) -> None:
    """Delete an edge package's own files (manifest last) and its folder; anything else found
    there is left, with a warning naming it."""
    own = _package_files(folder) or set()
    for name in sorted(own - {fmt.MANIFEST_FILE}) + sorted(own & {fmt.MANIFEST_FILE}):
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    if not rmdir_if_empty(folder):
        warnings.warn(
            f"kept {folder}: it holds files that are not part of the package it backed up",
            RuntimeWarning,
            stacklevel=2,
        )


def remove_stale(folder: Path) -> None:
    """Finish what exports killed in `folder` left, once their process is gone: remove a
    half-written package; put a backed-up package back where its target is missing, else
    remove it. A live export's folders are never touched."""
    for entry in _scandir(folder):
        match = _TEMP_NAME.fullmatch(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False) or pid_alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        if match["kind"] == "partial":
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(folder / match["name"]):
            _remove_package(path)
        else:
            _restore(path, folder / match["name"])


def _restore(backup: Path, target: Path) -> None:
    # On failure someone else restored or created the target first; a later run removes it.
    with contextlib.suppress(OSError):
        os.rename(backup, target)


def rmdir_if_empty(path: Path) -> bool:
    try:
        os.rmdir(path)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False  # not empty (someone else's files), or not ours to remove


def _is_output_path(name: str, out_dir: Path) -> bool:
    """Whether absolute path `name` is one an export writes: the output, a folder above it (which
    it may create), something inside it, or one of its temporary siblings."""
    out = os.path.abspath(out_dir)
    temp_prefix = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.")
    return (
        name == out
        or out.startswith(name + os.sep)
        or name.startswith(out + os.sep)
        or name.startswith(temp_prefix)
    )


def _listdir(folder: Path) -> list[str]:
    return [e.name for e in _scandir(folder)]


def _scandir(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as entries:
            return list(entries)
    except (FileNotFoundError, NotADirectoryError):
        return []


def output_error(exc: OSError, out_dir: Path) -> OutputError | None:
    """`exc` as an `OutputError` when it is about writing the output (no space, no permission,
    a path that cannot be made); None for other errors (reading the source, say)."""
    if isinstance(exc, EdgeError):
        return None
    parent = os.path.abspath(out_dir.parent)
    names = [os.path.abspath(os.fsdecode(f)) for f in (exc.filename, exc.filename2) if f]
    if exc.errno not in _NO_SPACE and not any(_is_output_path(n, out_dir) for n in names):
        return None
    if exc.errno in _NO_SPACE:
        hint = f"free space in {parent} or choose another output"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        hint = f"{parent} is not writable: choose another output"
    else:
        hint = "choose another output"
    where = f" ({names[0]})" if names else ""
    return OutputError(
        f"cannot write the package {out_dir}: {exc.strerror or exc}{where}; "
        f"{hint}. Nothing that was there before was changed"
    )
