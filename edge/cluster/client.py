"""The coordinator's side of one worker link: connect, load a slice, run steps.

Every wait is bounded: the connection must complete its CurveZMQ handshake within
`connect_timeout_s`, and a request returns, fails, or raises `PeerLostError` as soon as the
link's monitor reports the connection gone (a killed worker: at once; a paused or cut-off one:
after the heartbeat timeout) and at the latest after `request_timeout_s`.
"""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from edge.cluster.errors import (
    AuthenticationError,
    PeerLostError,
    ProtocolError,
    RemoteError,
    require_zmq,
)
from edge.cluster.frames import Message, MetaValue
from edge.cluster.keys import CurveKeys
from edge.cluster.transport import LinkConfig, client_socket, receive, send


class WorkerClient:
    """One authenticated link to a worker at `endpoint` ("tcp://host:port").

    >>> link = WorkerClient("tcp://10.0.0.7:5710", worker_public, cluster_keys)  # doctest: +SKIP
    >>> link.load_slice(0, 16)  # embed and blocks 0..14
    >>> hidden = link.step(np.array([[1, 2, 3]]), position=0)  # [1, 3, H] float32
    """

    def __init__(
        self,
        endpoint: str,
        server_public: str | None,
        keys: CurveKeys | None,
        config: LinkConfig | None = None,
        name: str = "",
    ) -> None:
        require_zmq()
        import zmq

        self.endpoint, self.name = endpoint, name or endpoint
        self.config = config or LinkConfig()
        self._zmq = zmq
        self._ctx = zmq.Context.instance()
        self._ids = itertools.count(1)
        self._lost: str | None = None
        self._sock = client_socket(self._ctx, keys, server_public, self.config)
        # A unique inproc name: pyzmq's default reuses the file descriptor's number.
        self._monitor = self._sock.get_monitor_socket(addr=f"inproc://edge-link-{uuid.uuid4().hex}")
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)
        self._sock.connect(endpoint)
        self._wait_handshake()

    # ---- connection ---------------------------------------------------------------------------
    def _wait_handshake(self) -> None:
        zmq = self._zmq
        deadline = time.monotonic() + self.config.connect_timeout_s
        connected = False
        while (left := deadline - time.monotonic()) > 0:
            if not self._monitor.poll(max(1, int(left * 1000))):
                continue
            event = self._event()
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return
            if event == zmq.EVENT_CONNECTED:
                connected = True
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.close()
                raise AuthenticationError(
                    f"{self.name} refused this coordinator's key: pair this device with the "
                    "cluster first (`edge cluster pair`)"
                )
            elif event in (
                zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
            ):
                self.close()
                raise AuthenticationError(f"the CurveZMQ handshake with {self.name} failed")
        self.close()
        if connected:
            raise AuthenticationError(
                f"{self.name} accepted the connection but not the CurveZMQ handshake within "
                f"{self.config.connect_timeout_s:g} s: its key is not the one paired"
            )
        raise PeerLostError(
            f"cannot reach {self.name} within {self.config.connect_timeout_s:g} s", self.name
        )

    def _event(self) -> int:
        from zmq.utils.monitor import recv_monitor_message

        return int(recv_monitor_message(self._monitor)["event"])

    def close(self) -> None:
        if not self._sock.closed:
            with contextlib.suppress(self._zmq.ZMQError):
                self._sock.disable_monitor()
        for sock in (self._monitor, self._sock):
            if not sock.closed:
                sock.close(0)

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- requests -----------------------------------------------------------------------------
    def request(
        self,
        kind: str,
        meta: Mapping[str, MetaValue] | None = None,
        buffers: Sequence[np.ndarray] = (),
        timeout_s: float | None = None,
    ) -> Message:
        """Send one request, wait for its reply; `RemoteError` if the worker answered an
        error, `PeerLostError` if the link died or the reply did not come in time."""
        return self.collect(self.submit(kind, meta, buffers), kind, timeout_s)

    def submit(
        self,
        kind: str,
        meta: Mapping[str, MetaValue] | None = None,
        buffers: Sequence[np.ndarray] = (),
    ) -> int:
        """Send a request without waiting (a star reduction sends to every worker first);
        its id for `collect`."""
        if self._lost is not None:
            raise PeerLostError(f"{self.name} was lost earlier: {self._lost}", self.name)
        ident = next(self._ids)
        try:
            send(self._sock, Message(kind, ident, dict(meta or {}), tuple(buffers)))
        except self._zmq.ZMQError as exc:
            self._lose(f"send failed: {exc}")
        return ident

    def post(
        self,
        kind: str,
        meta: Mapping[str, MetaValue] | None = None,
        buffers: Sequence[np.ndarray] = (),
    ) -> None:
        """Send a message that gets no reply (a worker forwarding its output to the next);
        `PeerLostError` if the link has reported its peer gone since the last send."""
        zmq = self._zmq
        while self._monitor.poll(0):
            if self._event() in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                self._lose("the connection dropped (no heartbeat answer, or closed)")
        self.submit(kind, meta, buffers)

    def collect(self, ident: int, kind: str, timeout_s: float | None = None) -> Message:
        """The reply to request `ident` (of type `kind`), waiting as `request` does."""
        zmq = self._zmq
        timeout_s = timeout_s or self.config.request_timeout_s
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            ready = dict(self._poller.poll(max(1, int(left * 1000))))
            # A reply that came with a disconnect is still the reply: read the socket first.
            if self._monitor in ready and self._sock not in ready:
                event = self._event()
                if event in (zmq.EVENT_DISCONNECTED, zmq.EVENT_CLOSED):
                    self._lose("the connection dropped (no heartbeat answer, or closed)")
            if self._sock in ready:
                try:
                    _, reply = receive(
                        self._sock,
                        max_bytes=self.config.max_message_bytes,
                        types={kind, "error"},
                    )
                except ProtocolError as exc:
                    self._lose(f"it sent a malformed reply: {exc}")
                if reply.id != ident:
                    continue  # the late reply of a request that timed out
                if reply.type == "error":
                    raise RemoteError(
                        f"{self.name}: {reply.meta.get('kind', 'Error')}: "
                        f"{reply.meta.get('message', '')}",
                        str(reply.meta.get("kind", "")),
                        self.name,
                    )
                return reply
        self._lose(f"no reply to {kind!r} within {timeout_s:g} s")
        raise AssertionError  # unreachable: _lose raises

    def _lose(self, why: str) -> None:
        self._lost = why
        raise PeerLostError(f"lost worker {self.name}: {why}", self.name)

    @property
    def lost(self) -> bool:
        return self._lost is not None

    # ---- the worker's API ---------------------------------------------------------------------
    def ping(self) -> float:
        """Round-trip time of an empty request, in seconds."""
        start = time.perf_counter()
        self.request("ping")
        return time.perf_counter() - start

    def info(self) -> dict[str, Any]:
        """What the worker is and holds: node id, package, slice, free memory, profile."""
        return dict(self.request("info").meta)

    def load_slice(
        self, start: int, end: int, max_context: int | None = None, threads: int | None = None
    ) -> dict[str, Any]:
        """Make the worker hold parts [start, end) of its package (replacing what it held)."""
        meta: dict[str, MetaValue] = {"start": start, "end": end}
        if max_context is not None:
            meta["max_context"] = max_context
        if threads is not None:
            meta["threads"] = threads
        return dict(self.request("load", meta).meta)

    def step(
        self,
        inputs: np.ndarray,
        position: int,
        logits: str = "last",
        expect: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Run the slice on `inputs` at `position`: token ids int64 [1, S] for a slice starting
        with the embedding, else hidden states float32 [1, S, H]. Returns hidden states
        [1, S, H], or logits [1, K, V] for a slice ending with the head (K = 1 for
        logits="last", S for "all"). `expect`: the slice [start, end) the caller loaded; a
        worker holding another (re-sliced by someone else) refuses the step."""
        meta: dict[str, object] = {"position": position, "logits": logits}
        if expect is not None:
            meta["slice"] = list(expect)
        return self.step_reply(self.submit("step", meta, (inputs,)))

    def step_reply(self, ident: int) -> np.ndarray:
        """The output a step request `ident` sent back (its one buffer)."""
        reply = self.collect(ident, "step")
        if len(reply.buffers) != 1:
            self._lose(f"a step reply with {len(reply.buffers)} buffers")
        return reply.buffers[0]

    def reset(self) -> None:
        """Empty the worker's KV cache (its slice stays loaded)."""
        self.request("reset")

    # ---- tensor parallel ---------------------------------------------------------------------
    def submit_load_shard(
        self,
        share: Mapping[str, MetaValue],
        blocks: tuple[int, int],
        max_context: int,
        threads: int | None = None,
    ) -> int:
        """Ask the worker to hold `share` (`Share.as_meta()`) of blocks [first, last); the
        reply (`collect(ident, "load_shard")`) says what it holds."""
        meta: dict[str, MetaValue] = {
            "share": dict(share),
            "blocks": list(blocks),
            "max_context": max_context,
        }
        if threads is not None:
            meta["threads"] = threads
        return self.submit("load_shard", meta)

    def submit_partial(self, layer: int, phase: str, x: np.ndarray, position: int) -> int:
        """Send hidden states `x` [S, H] for the worker's partial of `phase` ("attention" or
        "ffn") of block `layer`; `partial(ident)` reads the reply."""
        return self.submit("shard", {"layer": layer, "phase": phase, "position": position}, (x,))

    def submit_ring(
        self,
        layer: int,
        phase: str,
        x: np.ndarray | None,
        position: int,
        token: int,
        last: bool,
    ) -> int:
        """Ask for the worker's turn in ring reduction `token` (`edge.cluster.ring`): `x`
        [S, H] for the first worker, None where the previous worker hands it on. The last
        worker's reply (`partial`) is every worker's partial summed; the others' (`handed_on`)
        say whether their hand-overs reached the next."""
        meta = {"layer": layer, "phase": phase, "position": position, "ring": token, "last": last}
        return self.submit("shard", meta, () if x is None else (x,))

    def handed_on(self, ident: int) -> str | None:
        """None once a ring turn `ident` passed x and the sum on; else why it could not."""
        reply = self.collect(ident, "shard")
        if reply.meta.get("forwarded") is True:
            return None
        return str(reply.meta.get("why", "no reason given"))[:200]

    def partial(self, ident: int, shape: tuple[int, ...]) -> np.ndarray:
        """The partial [S, H] sent back for request `ident`; any other shape loses the link."""
        reply = self.collect(ident, "shard")
        if len(reply.buffers) != 1 or reply.buffers[0].shape != shape:
            self._lose(f"a partial of the wrong shape (expected {list(shape)})")
        if reply.buffers[0].dtype != np.float32:
            self._lose("a partial that is not float32")
        return reply.buffers[0]


def answers(endpoint: str, server_public: str, cluster: str, timeout_s: float = 1.0) -> bool:
    """Whether the paired worker at `endpoint` completes a handshake and a ping within about
    `timeout_s` each (a worker that left and came back, for `Backend.reachable`)."""
    from edge.cluster.errors import ClusterError
    from edge.cluster.keys import KeyStore
    from edge.errors import ConfigError

    config = LinkConfig(connect_timeout_s=timeout_s, request_timeout_s=timeout_s)
    try:
        keys = KeyStore().cluster_keys(cluster)
        with WorkerClient(endpoint, server_public, keys, config) as link:
            link.ping()
    except (ClusterError, ConfigError):
        return False
    return True
