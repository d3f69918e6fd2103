"""Sending a package to a worker that lacks it: verified, resumable chunks over the worker link.

The package is untrusted input on the worker, as everywhere: the offered manifest must hash to
the offered package id and pass the manifest checks, every file name is one the manifest lists
(plain relative paths), every chunk is size-limited, appended at exactly the end of what the
worker has (no holes, no rewrites) and hashed, and nothing is used before the whole folder
passes `edge.package.open_package(verify="full")`. Files land in a hidden sibling folder named
after the package id, so a transfer cut off (a worker restarted, a link lost) resumes from the
bytes already there; a file whose sha256 differs from the manifest's at the end is deleted and
sent again. Only then is the folder renamed into place.

    coordinator -> worker   package_offer   {package_id} + the manifest's bytes
    worker -> coordinator   package_offer   {have: {path: bytes already there, if any}}
    coordinator -> worker   package_chunk   {path, offset, length, sha256} + bytes
    worker -> coordinator   package_chunk   {size}
    coordinator -> worker   package_commit  {package_id}
    worker -> coordinator   package_commit  {ok: true, package} | {ok: false, bad: [paths]}

Bytes travel as an int32 buffer (the frame format has no byte dtype), zero-padded to a multiple
of 4; `length` says how many count. `edge cluster serve PKG --receive` with PKG missing serves
these (and ping/info) to paired coordinators only, then serves PKG as usual on the same ports;
`edge cluster send PKG --peer HOST:PORT` is the coordinator's side.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge import format as fmt
from edge.cluster.errors import ClusterError, ProtocolError
from edge.cluster.frames import Message, error_message
from edge.errors import ConfigError, EdgeError

log = logging.getLogger("edge.cluster.transfer")
REQUESTS = frozenset({"package_offer", "package_chunk", "package_commit"})
CHUNK_BYTES = 1 << 20
MAX_CHUNK_BYTES = 8 << 20
MAX_MANIFEST_BYTES = 16 << 20
GRACE_S = 1.0  # served after the commit, before the worker reopens the ports for the model


@dataclass(frozen=True)
class TransferLimits:
    """What a worker accepts: the largest chunk, the largest manifest, the largest package
    (None: what the disk has free, less `disk_reserve` bytes)."""

    max_chunk_bytes: int = MAX_CHUNK_BYTES
    max_manifest_bytes: int = MAX_MANIFEST_BYTES
    max_package_bytes: int | None = None
    disk_reserve: int = 256 << 20

    def __post_init__(self) -> None:
        if not 4096 <= self.max_chunk_bytes <= 64 << 20:
            raise ConfigError(f"max_chunk_bytes={self.max_chunk_bytes}; 4 KiB .. 64 MiB")
        if not 4096 <= self.max_manifest_bytes <= fmt.MAX_MANIFEST_BYTES:
            raise ConfigError(f"max_manifest_bytes={self.max_manifest_bytes}; out of range")


def to_wire(data: bytes) -> np.ndarray:
    """Bytes as a little-endian int32 buffer, zero-padded to a multiple of 4."""
    return np.frombuffer(data + b"\0" * (-len(data) % 4), dtype="<i4")


def from_wire(buffer: np.ndarray, length: object, limit: int) -> bytes:
    """The first `length` bytes of a received int32 buffer; `ProtocolError` if the length is
    out of range or does not match the buffer (more than 3 bytes of padding)."""
    if isinstance(length, bool) or not isinstance(length, int) or not 0 <= length <= limit:
        raise ProtocolError(f"a byte length must be an integer in 0 .. {limit}")
    if (
        buffer.dtype != np.dtype("<i4")
        or buffer.ndim != 1
        or buffer.nbytes != length + (-length % 4)
    ):
        raise ProtocolError(f"{buffer.nbytes} bytes on the wire for {length} announced")
    return buffer.tobytes()[:length]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


class PackageReceiver:
    """The worker's side: receives one package into `dest` (which must not exist yet)."""

    def __init__(self, dest: Path, limits: TransferLimits | None = None) -> None:
        self.dest = Path(dest).absolute()
        self.limits = limits or TransferLimits()
        self.package_id: str | None = None
        self.files: dict[str, fmt.FileEntry] = {}
        self.done = False

    def partial(self, package_id: str) -> Path:
        return self.dest.parent / f".{self.dest.name}.partial-{package_id[:16]}"

    def handle(self, message: Message) -> Message:
        """One request -> its reply; a refused one raises (an `EdgeError`)."""
        if self.done:
            raise ConfigError(f"the package is already in place at {self.dest}")
        if message.type == "package_offer":
            return Message("package_offer", message.id, {"have": self._offer(message)})
        if message.type == "package_chunk":
            return Message("package_chunk", message.id, {"size": self._chunk(message)})
        if message.type == "package_commit":
            return Message("package_commit", message.id, self._commit(message))
        raise ProtocolError(f"not a transfer message: {message.type}")

    # ---- requests ----------------------------------------------------------------------------
    def _offer(self, message: Message) -> dict[str, int]:
        from edge.manifest_checks import check_manifest

        package_id = message.meta.get("package_id")
        if not isinstance(package_id, str) or len(package_id) != 64:
            raise ProtocolError("package_offer: package_id must be 64 hex digits")
        if len(message.buffers) != 1:
            raise ProtocolError("package_offer carries the manifest as one buffer")
        raw = from_wire(
            message.buffers[0], message.meta.get("length"), self.limits.max_manifest_bytes
        )
        if hashlib.sha256(raw).hexdigest() != package_id:
            raise ProtocolError("package_offer: the manifest does not hash to the package id")
        manifest = fmt.manifest_from_bytes(raw, "the offered manifest")  # PackageError if bad
        check_manifest(manifest)
        files = {f.path: f for f in manifest.files}
        if fmt.MANIFEST_FILE in files or len(files) != len(manifest.files):
            raise ProtocolError("package_offer: files[] lists the manifest or a name twice")
        if self.dest.exists():
            raise ConfigError(f"{self.dest} exists: not overwriting it with a received package")
        folder = self.partial(package_id)
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        if folder.is_symlink() or not folder.is_dir():
            raise ConfigError(f"{folder} is not a folder this worker made")
        total = sum(f.size for f in files.values())
        have = {path: self._size(folder / path, f.size) for path, f in files.items()}
        have = {path: size for path, size in have.items() if size}  # the reply stays small
        room = self.limits.max_package_bytes
        if room is None:
            room = shutil.disk_usage(folder).free - self.limits.disk_reserve + sum(have.values())
        if total > room:
            raise ConfigError(f"the package needs {total >> 20} MiB; {room >> 20} MiB available")
        (folder / fmt.MANIFEST_FILE).write_bytes(raw)
        self.package_id, self.files = package_id, files
        log.info("receiving package %s: %d files, %d MiB", package_id[:16], len(files), total >> 20)
        return have

    @staticmethod
    def _size(target: Path, expected: int) -> int:
        """Bytes already there (a file longer than it should be starts over)."""
        if target.is_symlink() or (target.exists() and not target.is_file()):
            raise ConfigError(f"{target} is not a regular file")
        size = target.stat().st_size if target.exists() else 0
        if size > expected:
            target.unlink()
            size = 0
        return size

    def _chunk(self, message: Message) -> int:
        if self.package_id is None:
            raise ProtocolError("package_chunk before package_offer")
        meta = message.meta
        path, offset, digest = meta.get("path"), meta.get("offset"), meta.get("sha256")
        if not isinstance(path, str) or path not in self.files:
            raise ProtocolError(f"package_chunk: {path!r:.80} is not a file of the offer")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ProtocolError("package_chunk: offset must be a non-negative integer")
        if len(message.buffers) != 1:
            raise ProtocolError("package_chunk carries one buffer")
        data = from_wire(message.buffers[0], meta.get("length"), self.limits.max_chunk_bytes)
        if not isinstance(digest, str) or hashlib.sha256(data).hexdigest() != digest:
            raise ProtocolError(f"package_chunk: {path} at {offset}: sha256 mismatch")
        target = self.partial(self.package_id) / path
        size = target.stat().st_size if target.exists() else 0
        if offset != size:
            raise ProtocolError(f"package_chunk: {path} has {size} bytes; got offset {offset}")
        if offset + len(data) > self.files[path].size:
            raise ProtocolError(f"package_chunk: {path} would exceed its {self.files[path].size}")
        target.parent.mkdir(parents=True, exist_ok=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0)
        fd = os.open(target, flags, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
        return offset + len(data)

    def _commit(self, message: Message) -> dict[str, Any]:
        from edge.package import open_package

        if self.package_id is None or message.meta.get("package_id") != self.package_id:
            raise ProtocolError("package_commit: not the package offered")
        folder = self.partial(self.package_id)
        bad = []
        for path, entry in self.files.items():
            target = folder / path
            ok = target.is_file() and target.stat().st_size == entry.size
            if not ok or _sha256(target) != entry.sha256:
                target.unlink(missing_ok=True)
                bad.append(path)
        if bad:
            log.warning("received files failed their sha256, to send again: %s", bad)
            return {"ok": False, "bad": bad}
        for path in self.files:
            fd = os.open(folder / path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        try:
            open_package(folder, verify="full").close()  # the one gate for untrusted packages
        except EdgeError:
            shutil.rmtree(folder)  # whole and as sent, yet not a package to run: drop it
            self.package_id, self.files = None, {}
            raise
        os.rename(folder, self.dest)
        self.done = True
        log.info("package %s in place at %s", self.package_id[:16], self.dest)
        return {"ok": True, "package": str(self.dest)}


# ---- the coordinator ----------------------------------------------------------------------------
def send_package(
    link: Any,
    package: str | os.PathLike[str],
    *,
    chunk_bytes: int = CHUNK_BYTES,
    rounds: int = 2,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Send the package folder `package` over `link` (a `WorkerClient`) to a worker that
    lacks it, resuming from what the worker reports it has; returns the commit's reply.
    Files the worker finds corrupted at the end are sent again (up to `rounds` times)."""
    from edge.package import open_package

    root = Path(package)
    open_package(root).close()  # never pass on a package that does not check out here
    raw = (root / fmt.MANIFEST_FILE).read_bytes()
    package_id = hashlib.sha256(raw).hexdigest()
    manifest = fmt.manifest_from_bytes(raw)
    if not 0 < chunk_bytes <= MAX_CHUNK_BYTES:
        raise ConfigError(f"chunk_bytes={chunk_bytes}; 1 .. {MAX_CHUNK_BYTES}")
    for _ in range(rounds):
        offer = {"package_id": package_id, "length": len(raw)}
        have = link.request("package_offer", offer, (to_wire(raw),)).meta.get("have")
        if not isinstance(have, dict):
            raise ProtocolError("the worker's package_offer reply has no `have`")
        for entry in manifest.files:
            start = have.get(entry.path, 0)
            if isinstance(start, bool) or not isinstance(start, int) or start > entry.size:
                raise ProtocolError(f"the worker reports {start!r:.40} bytes of {entry.path}")
            with open(root / entry.path, "rb") as f:
                f.seek(start)
                offset = start
                while offset < entry.size:
                    data = f.read(min(chunk_bytes, entry.size - offset))
                    if not data:
                        raise ClusterError(f"{entry.path} is shorter than the manifest says")
                    meta = {
                        "path": entry.path,
                        "offset": offset,
                        "length": len(data),
                        "sha256": hashlib.sha256(data).hexdigest(),
                    }
                    link.request("package_chunk", meta, (to_wire(data),))
                    offset += len(data)
                    if progress is not None:
                        progress(entry.path, offset, entry.size)
        reply = dict(link.request("package_commit", {"package_id": package_id}).meta)
        if reply.get("ok") is True:
            return reply
        log.warning("the worker asks again for %s", reply.get("bad"))
    raise ClusterError(f"the worker could not verify {reply.get('bad')} after {rounds} rounds")


# ---- the worker, before it has a package --------------------------------------------------------
def receive_package(
    config: Any, store: Any = None, *, limits: TransferLimits | None = None, out: Any = sys.stdout
) -> tuple[str, ...]:
    """Serve ping, info and the transfer messages on `config.endpoints` (a `WorkerConfig`) to
    paired coordinators until the package is in place at `config.package`; returns the
    endpoints it listened on, for the worker to serve the package on the same ports."""
    import socket

    import zmq
    from zmq.auth.thread import ThreadAuthenticator

    from edge.cluster.errors import PairingError, require_zmq
    from edge.cluster.keys import KeyStore
    from edge.cluster.transport import receive, send, server_socket
    from edge.cluster.worker import _Allowed

    require_zmq()
    store = store or KeyStore()
    node_id, keys = store.node()
    clusters = None if config.clusters is None else list(config.clusters)
    if not store.allowed_keys("coordinator", clusters):
        raise PairingError("this device is paired with no coordinator: run `edge cluster pair`")
    receiver = PackageReceiver(Path(config.package), limits)
    ctx = zmq.Context()
    auth = ThreadAuthenticator(ctx, log=logging.getLogger("edge.cluster.zap"))
    auth.start()
    auth.configure_curve_callback("*", _Allowed(store, config.clusters))
    sock, endpoints = server_socket(ctx, keys, config.link, config.endpoints)
    info = {"node_id": node_id, "name": socket.gethostname(), "receiving": str(config.package)}
    print(f"receiving {config.package} as {node_id} at {' '.join(endpoints)}", file=out, flush=True)
    closing_at: float | None = None
    try:
        # Once the package is in place, serve a moment longer: closing at once could drop the
        # connection under the commit's reply before the coordinator has read it.
        while closing_at is None or time.monotonic() < closing_at:
            if not sock.poll(100):
                continue
            try:
                identity, message = receive(
                    sock,
                    max_bytes=config.link.max_message_bytes,
                    types={"ping", "info", *REQUESTS},
                    routed=True,
                )
            except ProtocolError as exc:
                log.warning("refused a message: %s", exc)
                if getattr(exc, "identity", None) is not None:
                    send(sock, error_message(0, "ProtocolError", str(exc)), exc.identity)  # type: ignore[attr-defined]
                continue
            try:
                if message.type == "ping":
                    reply = Message("ping", message.id)
                elif message.type == "info":
                    held = receiver.package_id if receiver.done else None
                    reply = Message("info", message.id, {**info, "package_id": held})
                else:
                    reply = receiver.handle(message)
            except EdgeError as exc:
                reply = error_message(message.id, type(exc).__name__, str(exc))
            except OSError as exc:
                reply = error_message(message.id, type(exc).__name__, str(exc))
            send(sock, reply, identity)
            if receiver.done and closing_at is None:
                closing_at = time.monotonic() + GRACE_S
    finally:
        sock.close(linger=2000)  # the commit's reply goes out before the port is reused
        auth.stop()
        ctx.term()
    return tuple(endpoints)
