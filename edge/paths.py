"""Where edge keeps downloaded models and built packages on this machine.

One root (`cache_dir`) so a user can move or wipe everything edge stored with one variable.
"""

from __future__ import annotations

import contextlib
import os
import pathlib

from edge.errors import CacheDirError


def cache_dir() -> pathlib.Path:
    """Return edge's cache root, creating it when possible.

    `$EDGE_CACHE_DIR` wins, then `$XDG_CACHE_HOME/edge`, then `~/.cache/edge`. A full or
    read-only location is not an error here: optional records (verification stamps, speculative
    calibration) are written through `edge.stamps`, which warns and goes on, while what must be
    stored (pulled models, exported packages) goes through `writable_dir`, which raises.
    """
    explicit = os.environ.get("EDGE_CACHE_DIR")
    if explicit:
        root = pathlib.Path(explicit).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
        root = base / "edge"
    with contextlib.suppress(OSError):  # reported by whoever needs to write there
        root.mkdir(parents=True, exist_ok=True)
    return root


def writable_dir(name: str) -> pathlib.Path:
    """Return (creating it) the cache folder `name`; `CacheDirError` if it cannot be created.

    An existing read-only folder is returned as is: a pre-filled cache may be mounted
    read-only, and whoever writes into it reports its own failure.
    """
    path = cache_dir() / name
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CacheDirError(
            f"cannot create edge's cache folder {path} "
            f"({exc.strerror or exc}); set EDGE_CACHE_DIR to a writable "
            "folder"
        ) from exc
    return path


def models_dir() -> pathlib.Path:
    """Return (creating it) the folder holding pulled source models (GGUF files)."""
    return writable_dir("models")


def packages_dir() -> pathlib.Path:
    """Return (creating it) the folder holding exported edge packages."""
    return writable_dir("packages")


def pid_alive(pid: int) -> bool:
    """Whether process `pid` may still be running (so its temporaries must be left alone)."""
    if pid <= 0:
        return True  # not a real process id: never treat it as dead
    if os.name == "nt":
        try:
            import psutil
        except ImportError:
            return True
        return bool(psutil.pid_exists(pid))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # EPERM: it exists, owned by someone else
    return True
