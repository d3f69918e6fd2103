"""Where edge keeps downloaded models and built packages on this machine.

One root (`cache_dir`) so a user can move or wipe everything edge stored with one variable.
"""

from __future__ import annotations

import os
import pathlib


def cache_dir() -> pathlib.Path:
    """Return (creating it) edge's cache root.

    `$EDGE_CACHE_DIR` wins, then `$XDG_CACHE_HOME/edge`, then `~/.cache/edge`.
    """
    explicit = os.environ.get("EDGE_CACHE_DIR")
    if explicit:
        root = pathlib.Path(explicit).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
        root = base / "edge"
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> pathlib.Path:
    """Return (creating it) the folder holding pulled source models (GGUF files)."""
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def packages_dir() -> pathlib.Path:
    """Return (creating it) the folder holding exported edge packages."""
    path = cache_dir() / "packages"
    path.mkdir(parents=True, exist_ok=True)
    return path
