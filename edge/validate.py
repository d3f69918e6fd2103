"""Checks of untrusted values read from a manifest: plain relative names, bounded integers,
exact types. Each failure is a `PackageError` naming the field; nothing else escapes."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath

from edge.errors import PackageError

# Sizes, counts and dimensions beyond this are corrupt: no edge model comes close, and every
# index stays within int64 arithmetic (numpy silently wraps past it).
MAX_DIMENSION = 1 << 40


def check_name(name: object, what: str) -> str:
    """`name` if it is a plain relative path inside a package, else `PackageError`.

    Only forward slashes, no empty, `.` or `..` components, nothing absolute on any platform,
    no NUL: the same manifest must mean the same files on Linux, macOS and Windows.
    """
    if not isinstance(name, str) or not name or len(name) > 4096:
        raise PackageError(f"{what}: a file name must be a non-empty string, got {name!r:.100}")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise PackageError(f"{what}: {name!r:.100} is not valid text (lone surrogates)") from None
    bad = (
        "\0" in name
        or "\\" in name
        or name.startswith("/")
        or PureWindowsPath(name).drive
        or PurePosixPath(name).is_absolute()
    )
    if bad or any(p in ("", ".", "..") for p in name.split("/")):
        raise PackageError(
            f"{what}: {name!r} is not a relative name inside the package "
            "(absolute paths, '..' and empty components are refused)"
        )
    return name


def check_int(value: object, what: str, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PackageError(f"{what} must be an integer, got {value!r}")
    if not minimum <= value <= MAX_DIMENSION:
        raise PackageError(f"{what} must be in [{minimum}, {MAX_DIMENSION}], got {value}")


def check_type(value: object, types: type | tuple[type, ...], what: str) -> None:
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise PackageError(f"{what} has the wrong type: {value!r}")
    if not isinstance(value, types):
        raise PackageError(f"{what} has the wrong type: {type(value).__name__} {value!r:.80}")
