"""sha256 of sources and files, remembered by fingerprint so a multi-GB file is read once.

A leaf: the exporters (which record the digest of what they export) and the resolver (which
compares it) both use it.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from edge.format import MANIFEST_FILE, sha256_file
from edge.paths import cache_dir
from edge.stamps import fingerprint, read_stamp, settled, write_stamp

HF_SOURCE_FILES = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer*",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.*",
)


def source_sha256(path: str | os.PathLike[str]) -> str:
    """What identifies an export's source: a file's sha256; for an edge package its manifest's
    (which holds every file's sha256); for a Hugging Face folder a sha256 over the name and
    sha256 of each file an export reads (`HF_SOURCE_FILES`)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    if (path / MANIFEST_FILE).is_file():
        return file_sha256(path / MANIFEST_FILE)
    files = sorted({f for pattern in HF_SOURCE_FILES for f in path.glob(pattern) if f.is_file()})
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}\0{file_sha256(file)}\n".encode())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike[str], *, rehash: bool = False) -> str:
    """sha256 of `path`, read again only when its fingerprint (inode, ctime, size, mtime)
    differs from the last hash's, or when `rehash`."""
    path = Path(path).resolve()
    stamp = _sha_stamp(path)
    before = fingerprint(path.stat())
    known = None if rehash else read_stamp(stamp)
    if (
        isinstance(known, dict)
        and known.get("path") == str(path)
        and known.get("fingerprint") == before
        and isinstance(known.get("sha256"), str)
    ):
        return known["sha256"]
    started = time.time_ns()
    digest = sha256_file(path)
    if fingerprint(path.stat()) == before and settled([before], started):
        write_stamp(stamp, {"path": str(path), "fingerprint": before, "sha256": digest})
    return digest


def _sha_stamp(path: Path) -> Path:
    key = hashlib.sha256(str(path).encode()).hexdigest()[:24]
    return cache_dir() / "verified" / f"sha256-{key}.json"
