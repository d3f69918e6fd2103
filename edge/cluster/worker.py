"""`edge cluster serve`: a worker that holds a slice of a package and runs steps on it.

The worker keeps the package on its own disk; on a coordinator's request it holds either a
contiguous range of parts [start, end) (`SliceRunner`, pipeline parallel) and runs steps on it
(token ids or hidden states in, hidden states or logits out, at the position it is told; an
earlier one rewinds its KV cache), or a tensor-parallel share of every block of a range
(`ShardRunner`) and returns its partial of each block's attention and FFN.

Only coordinators paired with this device get past the CurveZMQ handshake (ZAP allow-list,
re-read on each connection, so a new pairing needs no restart), and the one worker a
coordinator introduced as the previous stage of its pipeline (`link`), which may send nothing
but its stage's output (`forward`): a pipeline hop goes worker to worker, not through the
coordinator, so a token crosses the network once per boundary. The same link carries a ring
reduction's hidden states and running sums between tensor-parallel shares (`edge.cluster.ring`).
A malformed, truncated or oversized request gets an error reply (or, past ZMQ_MAXMSGSIZE, a
dropped connection) and the worker keeps serving.
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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge.cluster.errors import PairingError, ProtocolError, require_zmq
from edge.cluster.frames import Message, error_message
from edge.cluster.keys import KeyStore
from edge.cluster.ring import Ring
from edge.cluster.transport import LinkConfig, receive_from, send, server_socket
from edge.errors import ConfigError, EdgeError

log = logging.getLogger("edge.cluster.worker")
REQUESTS = frozenset(
    {"ping", "info", "load", "step", "reset", "unload", "load_shard", "shard", "link", "forward"}
)
# What a peer worker may send: its output, and a ping (the link measured when it is linked).
FROM_PEERS = frozenset({"forward", "ping"})
PEER_ONLY = frozenset({"forward"})  # a coordinator may send anything else
# What a new coordinator request makes stale: a step still waiting for its input from a peer.
SUPERSEDES = frozenset({"step", "load", "reset", "unload", "link", "load_shard"})
SHARE_MODULE = "edge.cluster.shard_runner"
# A neighbour on the same home network completes its handshake in milliseconds; one this
# worker cannot reach (another subnet, a firewall) should cost the coordinator's load little
# before it relays instead (the coordinator probes its members with the same bound).
NEIGHBOUR_CONNECT_S = 2.0


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
    """ZAP credentials provider: the paired coordinator keys, read from disk per check, and
    the upstream worker a paired coordinator introduced (`link`), if any."""

    def __init__(self, store: KeyStore, clusters: tuple[str, ...] | None) -> None:
        self.store = store
        self.clusters = None if clusters is None else list(clusters)
        self.upstream: str | None = None

    def callback(self, domain: str, key: bytes) -> bool:
        text = key.decode("ascii")
        if text == self.upstream:
            return True
        try:
            return text in self.store.allowed_keys("coordinator", self.clusters)
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
        self.allowed = _Allowed(self.store, config.clusters)
        self.auth.configure_curve_callback("*", self.allowed)
        self.keys = keys
        self.sock, self.endpoints = server_socket(self.ctx, keys, config.link, config.endpoints)
        # The process before any slice, with the runtimes a slice or share runs on: what the
        # coordinator's memory plan for this device builds on.
        self.runtimes = import_runtimes()
        self.idle_rss = process_memory().get("rss")
        self.slice: Any = None  # SliceRunner once loaded
        self.shard: Any = None  # or ShardRunner
        self._stop = False
        # The pipeline's next stage (a link to the worker this one forwards its output to),
        # a step waiting for its input from the previous stage, and an input that came first.
        self.downstream: Any = None  # WorkerClient
        self._awaiting: tuple[bytes, Message] | None = None
        self._forwarded: Message | None = None
        self.hops = {"received": 0, "sent": 0}
        self.ring = Ring()  # a tensor-parallel share's ring reductions
        self.stars = 0  # and its star ones
        self.handlers: dict[str, Callable[[Message], Message | None]] = {
            "ping": lambda m: Message("ping", m.id),
            "info": lambda m: Message("info", m.id, self.info()),
            "load": self._load,
            "step": self._step,
            "reset": self._reset,
            "unload": self._unload,
            "load_shard": self._load_shard,
            "shard": self._partial,
            "link": self._link,
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
                "next_stage": None if self.downstream is None else self.downstream.endpoint,
            }
        if self.shard is not None:
            held = {
                "share": self.shard.share.as_meta(),
                "blocks": [min(self.shard.blocks), max(self.shard.blocks) + 1],
                "bytes": self.shard.nbytes,
                "predicted_growth": self.shard.predicted_growth,
                "next_in_ring": None if self.downstream is None else self.downstream.endpoint,
                "reductions": {"star": self.stars, "ring": self.ring.turns},
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
            "hops": dict(self.hops),
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

    def _step(self, message: Message, forwarded: Message | None = None) -> Message | None:
        """Run the slice on the step's buffer, or (meta `from_peer`: the request id the
        previous stage was sent) on the output that stage forwards: answered once it came.
        With meta `forward`, the output goes to the next stage and the reply only says so."""
        if self.slice is None:
            raise ConfigError("no slice loaded: send load first")
        position, logits = message.meta.get("position"), message.meta.get("logits", "last")
        token = message.meta.get("from_peer")
        if token is not None and forwarded is None:
            if isinstance(token, bool) or not isinstance(token, int):
                raise ConfigError("step: from_peer must be an integer")
            if self.allowed.upstream is None:
                raise ConfigError("step: from_peer, but no previous stage is linked")
            if message.buffers:
                raise ProtocolError("a step whose input comes from a peer carries no buffer")
            return None  # answered by `_complete` when the input is here
        buffers = message.buffers if forwarded is None else forwarded.buffers
        if len(buffers) != 1:
            raise ProtocolError(f"a step takes one buffer, got {len(buffers)}")
        if isinstance(position, bool) or not isinstance(position, int):
            raise ConfigError("step: position must be an integer")
        held = [self.slice.start, self.slice.end]
        if message.meta.get("slice", held) != held:  # another coordinator re-sliced this worker
            raise ConfigError(
                f"this worker holds parts [{held[0]}, {held[1]}), not the "
                f"{message.meta.get('slice')!r:.40} the step was meant for"
            )
        out = self.slice.step(buffers[0], position, str(logits))
        meta: dict[str, Any] = {"position": self.slice.position}
        if message.meta.get("forward"):
            meta["forwarded"] = self._forward({"token": message.id, "position": position}, out)
            if meta["forwarded"] is not True:
                meta["why"], meta["forwarded"] = meta["forwarded"], False
            else:
                self.hops["sent"] += 1
            return Message("step", message.id, meta)
        # The reply is sent without a copy: the buffer is rewritten only by the next step,
        # which the coordinator sends after it has this reply.
        return Message("step", message.id, meta, (out,))

    def _forward(self, meta: dict[str, Any], out: Any) -> bool | str:
        """Send this stage's output (or a ring's x or sum) to the next worker; True, or why
        it could not."""
        from edge.cluster.errors import ClusterError

        if self.downstream is None:
            return "no next worker is linked"
        try:
            self.downstream.post("forward", meta, (out,))
        except ClusterError as exc:
            return str(exc)
        return True

    def _receive_forward(self, message: Message) -> None:
        if "ring" in message.meta:
            self.ring.receive(message)
            return
        if len(message.buffers) != 1 or not isinstance(message.meta.get("token"), int):
            raise ProtocolError("a forward carries a token and one buffer")
        self._forwarded = message

    def _complete(self) -> tuple[bytes, Message] | None:
        """The awaited request (a step, or a ring reduction's turn), once its inputs came
        from the previous worker: (whom to answer, the reply). Inputs for another request are
        kept until a request or input replaces them."""
        if self._awaiting is None:
            return None
        identity, request = self._awaiting
        try:
            if request.type == "shard":
                reply = self.ring.turn(request, self._ring_partial(request), self._ring_forward)
            else:
                reply = self._forwarded_step(request)
        except Exception as exc:  # as in `handle_one`: an error reply, keep serving
            if not isinstance(exc, EdgeError):
                log.exception("a %s waiting for a peer failed", request.type)
            reply = error_message(request.id, type(exc).__name__, str(exc))
        if reply is None:
            return None
        self._awaiting = None
        return identity, reply

    def _forwarded_step(self, request: Message) -> Message | None:
        forwarded = self._forwarded
        if forwarded is None or request.meta.get("from_peer") != forwarded.meta.get("token"):
            return None
        self._forwarded = None
        self.hops["received"] += 1
        return self._step(request, forwarded)

    def _ring_partial(self, request: Message) -> Callable[[Any], Any]:
        meta, shard = request.meta, self.shard
        assert shard is not None  # `_partial` checked, `_drop` clears the request with it
        position = meta.get("position", 0)
        return lambda x: shard.partial(meta.get("phase"), meta.get("layer"), x, position)

    def _ring_forward(self, part: str, array: Any) -> bool | str:
        assert self._awaiting is not None
        return self._forward({"token": self._awaiting[1].meta["ring"], "ring": part}, array)

    def _link(self, message: Message) -> Message:
        """Meta `upstream`: the public key of the worker whose output this one takes (None:
        no longer); `downstream`: {endpoint, key} of the worker this one forwards to (None:
        no longer). Keys left out stay as they were. The next stage must know this one's key
        before this one connects, so a coordinator links from the end of a pipeline (or a
        ring of shares) back. What a former neighbour handed over is dropped. With meta
        `measure`, the reply says the new link's round trip and bandwidth (`next`), which the
        coordinator cannot measure itself."""
        from edge.cluster.client import WorkerClient
        from edge.cluster.keys import check_public_key

        meta = message.meta
        self.ring.clear()
        if "upstream" in meta:
            key = meta["upstream"]
            self.allowed.upstream = None if key is None else check_public_key(key)
        if "downstream" in meta:
            target = meta["downstream"]
            if self.downstream is not None:
                self.downstream.close()
                self.downstream = None
            if target is not None:
                if not isinstance(target, dict) or not isinstance(target.get("endpoint"), str):
                    raise ConfigError("link: downstream must be {endpoint, key}")
                key = check_public_key(target.get("key"))
                link = replace(
                    self.config.link,
                    connect_timeout_s=min(self.config.link.connect_timeout_s, NEIGHBOUR_CONNECT_S),
                )
                self.downstream = WorkerClient(
                    target["endpoint"], key, self.keys, link, "next stage"
                )
        reply: dict[str, Any] = {"upstream": self.allowed.upstream is not None}
        if meta.get("measure") is True and self.downstream is not None:
            reply["next"] = _measured(self.downstream)
        return Message("link", message.id, reply)

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

    def _partial(self, message: Message) -> Message | None:
        if self.shard is None:
            raise ConfigError("no share loaded: send load_shard first")
        if len(message.buffers) != 1 and "ring" not in message.meta:
            raise ProtocolError(f"a partial takes one buffer, got {len(message.buffers)}")
        meta = message.meta
        if "ring" in meta:  # answered once the previous worker's hand-overs came (`_complete`)
            up, down = self.allowed.upstream is not None, self.downstream is not None
            self.ring.begin(message, up, down)
            return None
        out = self.shard.partial(
            meta.get("phase"), meta.get("layer"), message.buffers[0], meta.get("position", 0)
        )
        self.stars += 1
        return Message("shard", message.id, {}, (out,))

    def _reset(self, message: Message) -> Message:
        if self.slice is not None:
            self.slice.reset()
        if self.shard is not None:
            self.shard.reset()
        self.ring.clear()
        return Message("reset", message.id)

    def _unload(self, message: Message) -> Message:
        self._drop()
        return Message("unload", message.id)

    def _drop(self) -> None:
        self._awaiting = self._forwarded = None
        self.ring.clear()
        if self.slice is not None:
            self.slice.close()
            self.slice = None
        self.shard = None

    # ---- the loop ----------------------------------------------------------------------------
    def handle_one(self) -> None:
        """Receive one request and answer it; any failure becomes an error reply. A peer
        worker's forward gets no reply, its ping a ping; anything else from a peer is
        refused unanswered."""
        try:
            identity, sender, message = receive_from(
                self.sock, max_bytes=self.config.link.max_message_bytes, types=REQUESTS
            )
        except ProtocolError as exc:
            identity = getattr(exc, "identity", None)
            log.warning("refused a message: %s", exc)
            if identity is not None:
                send(self.sock, error_message(0, "ProtocolError", str(exc)), identity)
            return
        assert identity is not None
        from_peer = sender is not None and sender == self.allowed.upstream
        if message.type not in (FROM_PEERS if from_peer else REQUESTS - PEER_ONLY):
            log.warning("refused a %r from %s", message.type, "a peer" if from_peer else sender)
            if not from_peer:
                refused = error_message(message.id, "ProtocolError", "not a request")
                send(self.sock, refused, identity)
            return
        if message.type in SUPERSEDES:
            self._awaiting = None
        reply: Message | None
        try:
            if message.type == "forward":
                self._receive_forward(message)
                reply = None
            else:
                reply = self.handlers[message.type](message)
                if reply is None:
                    self._awaiting = (identity, message)
        except EdgeError as exc:
            reply = error_message(message.id, type(exc).__name__, str(exc))
        except Exception as exc:  # a bug or a runtime failure: report it, keep serving
            log.exception("request %s failed", message.type)
            reply = error_message(message.id, type(exc).__name__, str(exc))
        if reply is not None and (not from_peer or reply.type == "ping"):
            send(self.sock, reply, identity)
        done = self._complete()
        if done is not None:
            send(self.sock, done[1], done[0])

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
        if self.downstream is not None:
            self.downstream.close()
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


def _measured(link: Any) -> dict[str, float | None]:
    """A link's round trip and bandwidth, measured as the coordinator measures its own."""
    from edge.cluster.members import measure

    rtt, bps = measure(link)
    return {"rtt_s": rtt, "link_bps": bps}


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
