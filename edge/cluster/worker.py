"""`edge cluster serve`: a worker that holds a slice of a package and runs steps on it.

The worker keeps the package on its own disk; on a coordinator's request it holds either a
contiguous range of parts [start, end) (`SliceRunner`, pipeline parallel) and runs steps on it
(token ids or hidden states in, hidden states or logits out, at the position it is told; an
earlier one rewinds its KV cache), or a tensor-parallel share of every block of a range
(`ShardRunner`) and returns its partial of each block's attention and FFN.

Only coordinators paired with this device get past the CurveZMQ handshake (ZAP allow-list,
re-read on each connection, so a new pairing needs no restart). A malformed,
truncated or oversized request gets an error reply (or, past ZMQ_MAXMSGSIZE, a dropped
connection) and the worker keeps serving.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.cluster.errors import PairingError, ProtocolError, require_zmq
from edge.cluster.frames import Message, error_message
from edge.cluster.keys import KeyStore
from edge.cluster.transport import LinkConfig, receive, send, server_socket
from edge.errors import ConfigError, EdgeError

log = logging.getLogger("edge.cluster.worker")
REQUESTS = frozenset({"ping", "info", "load", "step", "reset", "unload", "load_shard", "shard"})
SHARE_MODULE = "edge.cluster.shard_runner"


@dataclass(frozen=True)
class WorkerConfig:
    """What `edge cluster serve` was asked for."""

    package: Path
    endpoints: tuple[str, ...] = ("tcp://127.0.0.1:5710",)
    clusters: tuple[str, ...] | None = None  # accept coordinators of these (None: any paired)
    link: LinkConfig = field(default_factory=lambda: LinkConfig(max_message_bytes=32 << 20))
    threads: int | None = None
    max_context: int | None = None
    measure_profile: bool = True


class _Allowed:
    """ZAP credentials provider: the paired coordinator keys, read from disk per check."""

    def __init__(self, store: KeyStore, clusters: tuple[str, ...] | None) -> None:
        self.store = store
        self.clusters = None if clusters is None else list(clusters)

    def callback(self, domain: str, key: bytes) -> bool:
        try:
            return key.decode("ascii") in self.store.allowed_keys("coordinator", self.clusters)
        except Exception:  # a corrupt peers file refuses, never crashes the ZAP thread
            log.exception("reading the paired keys failed")
            return False


class Worker:
    """One worker process's state: its socket, package and slice."""

    def __init__(self, config: WorkerConfig, store: KeyStore | None = None) -> None:
        require_zmq()
        import zmq
        from zmq.auth.thread import ThreadAuthenticator

        from edge.package import open_package

        self.config = config
        self.store = store or KeyStore()
        self.node_id, keys = self.store.node()
        if not self.store.allowed_keys("coordinator", _list(config.clusters)):
            raise PairingError(
                "this device is paired with no coordinator: run `edge cluster pair --code CODE "
                "--peer HOST:PORT` with the code the coordinator shows"
            )
        self.package = open_package(config.package)
        self.package_id = hashlib.sha256(
            (Path(config.package) / "manifest.json").read_bytes()
        ).hexdigest()
        self.profile = _profile(config.measure_profile)
        self.ctx = zmq.Context()
        self.auth = ThreadAuthenticator(self.ctx, log=logging.getLogger("edge.cluster.zap"))
        self.auth.start()
        self.auth.configure_curve_callback("*", _Allowed(self.store, config.clusters))
        self.sock, self.endpoints = server_socket(self.ctx, keys, config.link, config.endpoints)
        # The process before any slice, with the runtimes a slice or share runs on: what the
        # coordinator's memory plan for this device builds on.
        self.runtimes = import_runtimes()
        self.idle_rss = process_memory().get("rss")
        self.slice: Any = None  # SliceRunner once loaded
        self.shard: Any = None  # or ShardRunner
        self._stop = False
        self.handlers: dict[str, Callable[[Message], Message]] = {
            "ping": lambda m: Message("ping", m.id),
            "info": lambda m: Message("info", m.id, self.info()),
            "load": self._load,
            "step": self._step,
            "reset": self._reset,
            "unload": self._unload,
            "load_shard": self._load_shard,
            "shard": self._partial,
        }

    def info(self) -> dict[str, Any]:
        from devices.memory_info import read_memory

        memory = read_memory()
        held = None
        if self.slice is not None:
            held = {
                "start": self.slice.start,
                "end": self.slice.end,
                "position": self.slice.position,
                "kv_bytes": self.slice.nbytes,
                "predicted_growth": self.slice.predicted_growth,
            }
        if self.shard is not None:
            held = {
                "share": self.shard.share.as_meta(),
                "blocks": [min(self.shard.blocks), max(self.shard.blocks) + 1],
                "bytes": self.shard.nbytes,
                "predicted_growth": self.shard.predicted_growth,
            }
        return {
            "node_id": self.node_id,
            "name": socket.gethostname(),
            "pid": os.getpid(),
            "package": str(self.config.package),
            "package_id": self.package_id,
            "parts": len(self.package.manifest.parts),
            "slice": held,
            "memory_available": memory.available,
            "memory_budget": memory.budget,
            "profile": self.profile,
            **process_memory(),
            "idle_rss": self.idle_rss,
            "runtimes": list(self.runtimes),
        }

    # ---- requests ----------------------------------------------------------------------------
    def _load(self, message: Message) -> Message:
        from edge.cluster.slice_runner import SliceRunner

        meta = message.meta
        start, end = meta.get("start"), meta.get("end")
        max_context = meta.get("max_context", self.config.max_context)
        threads = meta.get("threads", self.config.threads)
        for name, value in (("start", start), ("end", end)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"load: {name} must be an integer")
        for name, value in (("max_context", max_context), ("threads", threads)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise ConfigError(f"load: {name} must be an integer")
        self._drop()
        self.slice = SliceRunner(self.package, start, end, max_context=max_context, threads=threads)
        log.info("holding parts [%d, %d)", start, end)
        return Message("load", message.id, self.info())

    def _step(self, message: Message) -> Message:
        if self.slice is None:
            raise ConfigError("no slice loaded: send load first")
        position, logits = message.meta.get("position"), message.meta.get("logits", "last")
        if len(message.buffers) != 1:
            raise ProtocolError(f"a step takes one buffer, got {len(message.buffers)}")
        if isinstance(position, bool) or not isinstance(position, int):
            raise ConfigError("step: position must be an integer")
        held = [self.slice.start, self.slice.end]
        if message.meta.get("slice", held) != held:  # another coordinator re-sliced this worker
            raise ConfigError(
                f"this worker holds parts [{held[0]}, {held[1]}), not the "
                f"{message.meta.get('slice')!r:.40} the step was meant for"
            )
        out = self.slice.step(message.buffers[0], position, str(logits))
        # The reply is sent without a copy: the buffer is rewritten only by the next step,
        # which the coordinator sends after it has this reply.
        return Message("step", message.id, {"position": self.slice.position}, (out,))

    def _load_shard(self, message: Message) -> Message:
        from edge.cluster.shard_runner import load_share

        meta = message.meta
        self._drop()
        self.shard = load_share(
            self.package,
            meta.get("share"),
            meta.get("blocks"),
            meta.get("max_context", self.config.max_context),
            meta.get("threads", self.config.threads),
        )
        log.info("holding share %s of blocks %s", self.shard.share, meta.get("blocks"))
        return Message("load_shard", message.id, self.info())

    def _partial(self, message: Message) -> Message:
        if self.shard is None:
            raise ConfigError("no share loaded: send load_shard first")
        if len(message.buffers) != 1:
            raise ProtocolError(f"a partial takes one buffer, got {len(message.buffers)}")
        meta = message.meta
        out = self.shard.partial(
            meta.get("phase"), meta.get("layer"), message.buffers[0], meta.get("position", 0)
        )
        return Message("shard", message.id, {}, (out,))

    def _reset(self, message: Message) -> Message:
        if self.slice is not None:
            self.slice.reset()
        if self.shard is not None:
            self.shard.reset()
        return Message("reset", message.id)

    def _unload(self, message: Message) -> Message:
        self._drop()
        return Message("unload", message.id)

    def _drop(self) -> None:
        if self.slice is not None:
            self.slice.close()
            self.slice = None
        self.shard = None

    # ---- the loop ----------------------------------------------------------------------------
    def handle_one(self) -> None:
        """Receive one request and answer it; any failure becomes an error reply."""
        try:
            identity, message = receive(
                self.sock, max_bytes=self.config.link.max_message_bytes, types=REQUESTS, routed=True
            )
        except ProtocolError as exc:
            identity = getattr(exc, "identity", None)
            log.warning("refused a message: %s", exc)
            if identity is not None:
                send(self.sock, error_message(0, "ProtocolError", str(exc)), identity)
            return
        try:
            reply = self.handlers[message.type](message)
        except EdgeError as exc:
            reply = error_message(message.id, type(exc).__name__, str(exc))
        except Exception as exc:  # a bug or a runtime failure: report it, keep serving
            log.exception("request %s failed", message.type)
            reply = error_message(message.id, type(exc).__name__, str(exc))
        assert identity is not None
        send(self.sock, reply, identity)

    def serve_forever(self, ready: Callable[[Worker], None] | None = None) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        if ready is not None:
            ready(self)
        try:
            while not self._stop:
                if self.sock.poll(200):
                    self.handle_one()
        finally:
            self.close()

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stop = True

    def close(self) -> None:
        self._drop()
        self.sock.close(0)
        self.auth.stop()
        self.ctx.term()


def import_runtimes() -> tuple[str, ...]:
    """Import what a slice (ONNX Runtime) and a share (numpy, llvmlite) run on, and say which
    imported: done before the idle RSS is measured, that RSS holds them as this device's own
    files map them (another machine's libraries are not this one's), and the first load is
    quicker. A runtime that cannot import here is planned with the coordinator's footprint."""
    done = []
    for name, module in (("ort_cpu", "devices.backends.ort_cpu"), ("tensor", SHARE_MODULE)):
        try:
            importlib.import_module(module)
        except ImportError as exc:
            log.warning("runtime %s does not import here: %s", name, exc)
            continue
        done.append(name)
    return tuple(done)


def process_memory(status: str = "/proc/self/status") -> dict[str, int | None]:
    """This process's resident bytes now ("rss", VmRSS) and at its peak ("peak_rss", VmHWM):
    what the coordinator compares with its plan's prediction. Linux only (None elsewhere);
    `ru_maxrss` would be wrong for a worker forked from a bigger process (kept across exec)."""
    names = {"VmRSS:": "rss", "VmHWM:": "peak_rss"}
    out: dict[str, int | None] = dict.fromkeys(names.values())
    try:
        with open(status) as lines:
            for line in lines:
                words = line.split()
                if len(words) > 1 and words[0] in names and words[1].isdigit():
                    out[names[words[0]]] = 1024 * int(words[1])  # in kB
    except OSError:
        pass
    return out


def _list(clusters: tuple[str, ...] | None) -> list[str] | None:
    return None if clusters is None else list(clusters)


def _profile(measure: bool) -> dict[str, Any]:
    """Cores and memory always; measured rates (cached per machine) when asked."""
    from edge.step_inputs import usable_threads

    profile: dict[str, Any] = {"cores": usable_threads()}
    if measure:
        from devices.microbench import measured_profile

        p = measured_profile()
        profile.update(
            memory_bandwidth_gbs=p.memory_bandwidth_gbs,
            fp32_gflops=p.fp32_gflops,
            int8_gops=p.int8_gops,
            source=p.source,
        )
    return profile


def serve(
    config: WorkerConfig,
    *,
    advertise: Callable[[Worker], Any] | None = None,
    out: Any = sys.stdout,
) -> None:
    """Run a worker until SIGTERM/SIGINT; prints one "serving" line once it listens.
    `advertise(worker)` may return something with `close()` (an mDNS advertiser)."""
    from edge.heap import pin_mmap_threshold

    pin_mmap_threshold()  # before the package is opened (and maybe hashed)
    worker = Worker(config)
    advertised: list[Any] = []

    def ready(w: Worker) -> None:
        print(f"serving {w.node_id} at {' '.join(w.endpoints)}", file=out, flush=True)
        if advertise is not None:
            advertised.append(advertise(w))

    try:
        worker.serve_forever(ready)
    finally:
        for item in advertised:
            item.close()
