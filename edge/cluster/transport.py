"""ZeroMQ sockets for cluster links: CurveZMQ, size limits, heartbeats, typed frames.

A worker binds a ROUTER socket as a CurveZMQ server (its node keypair); a coordinator connects
a DEALER as a CurveZMQ client (the cluster keypair), knowing the worker's public key from
pairing, so both ends are authenticated and every byte after the handshake is encrypted
(Curve25519, XSalsa20-Poly1305, forward secret per connection). The worker's ZAP handler admits
only paired coordinator keys (`worker.py`).

Every socket refuses frames over `max_message_bytes` (ZMQ_MAXMSGSIZE: the connection is
dropped before the frame is read into memory) and pings its peer every `heartbeat_interval_s`
(ZMTP PING, answered by libzmq's I/O thread even while Python computes); a peer silent for
`heartbeat_timeout_s` (killed, SIGSTOPped, cut off) has its connection closed, which the client
sees on its monitor socket and turns into `PeerLostError`.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge.cluster.errors import ProtocolError, require_zmq
from edge.cluster.frames import Message, decode, encode
from edge.cluster.keys import CurveKeys
from edge.errors import ConfigError

if TYPE_CHECKING:
    import zmq


@dataclass(frozen=True)
class LinkConfig:
    """Limits and timings of one link. Detection of a vanished peer takes at most
    `detection_s` (heartbeat timeout plus one interval) while a request waits."""

    max_message_bytes: int = 64 << 20
    heartbeat_interval_s: float = 0.5
    heartbeat_timeout_s: float = 2.0
    connect_timeout_s: float = 5.0
    # Upper bound on one request, alive peer or not (a prompt on a slow board takes seconds).
    request_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_message_bytes < 4096:
            raise ConfigError(f"max_message_bytes={self.max_message_bytes}; must be >= 4096")
        for name in (
            "heartbeat_interval_s",
            "heartbeat_timeout_s",
            "connect_timeout_s",
            "request_timeout_s",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)}; must be > 0")
        if self.heartbeat_timeout_s < self.heartbeat_interval_s:
            raise ConfigError("heartbeat_timeout_s must be at least heartbeat_interval_s")

    @property
    def detection_s(self) -> float:
        return self.heartbeat_timeout_s + self.heartbeat_interval_s


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def configure(sock: zmq.Socket, config: LinkConfig) -> None:
    """Size limit, heartbeats, no lingering: what every cluster socket gets."""
    import zmq

    sock.setsockopt(zmq.MAXMSGSIZE, config.max_message_bytes)
    sock.setsockopt(zmq.HEARTBEAT_IVL, _ms(config.heartbeat_interval_s))
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, _ms(config.heartbeat_timeout_s))
    sock.setsockopt(zmq.HEARTBEAT_TTL, _ms(config.heartbeat_timeout_s))
    sock.setsockopt(zmq.HANDSHAKE_IVL, _ms(config.connect_timeout_s))
    sock.setsockopt(zmq.LINGER, 0)
    # A send to a peer libzmq has dropped would block forever (IMMEDIATE queues nothing):
    # bounded, it raises zmq.Again, which the link reports as a lost peer.
    sock.setsockopt(zmq.SNDTIMEO, _ms(config.connect_timeout_s))


def server_socket(
    ctx: zmq.Context, keys: CurveKeys | None, config: LinkConfig, endpoints: Sequence[str]
) -> tuple[zmq.Socket, list[str]]:
    """A ROUTER bound to `endpoints` (port 0 or '*' picks one); the endpoints it got.

    `keys=None` is plaintext, for benchmarks only: nothing in edge serves a model that way."""
    import zmq

    require_zmq()
    sock = ctx.socket(zmq.ROUTER)
    configure(sock, config)
    if keys is not None:
        if keys.secret is None:
            raise ConfigError("a server socket needs its secret key")
        sock.curve_server = True
        sock.curve_secretkey = keys.secret.encode("ascii")
    bound = []
    try:
        for endpoint in endpoints:
            sock.bind(endpoint.replace(":0", ":*") if endpoint.endswith(":0") else endpoint)
            bound.append(sock.getsockopt_string(zmq.LAST_ENDPOINT))
    except zmq.ZMQError as exc:
        sock.close(0)
        raise ConfigError(f"cannot listen on {endpoint}: {exc}") from exc
    return sock, bound


def client_socket(
    ctx: zmq.Context, keys: CurveKeys | None, server_public: str | None, config: LinkConfig
) -> zmq.Socket:
    """A DEALER that will authenticate as `keys` and accept only the server `server_public`."""
    import zmq

    require_zmq()
    sock = ctx.socket(zmq.DEALER)
    configure(sock, config)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # queue nothing for a peer that is not connected
    if keys is not None:
        if keys.secret is None or server_public is None:
            raise ConfigError("a CurveZMQ client needs its keypair and the server's public key")
        sock.curve_publickey = keys.public.encode("ascii")
        sock.curve_secretkey = keys.secret.encode("ascii")
        sock.curve_serverkey = server_public.encode("ascii")
    return sock


def send(sock: zmq.Socket, message: Message, identity: bytes | None = None) -> None:
    """Send without copying the buffers (libzmq reads them in place)."""
    frames = encode(message)
    sock.send_multipart([identity, *frames] if identity is not None else frames, copy=False)


def receive(
    sock: zmq.Socket, *, max_bytes: int, types: set[str] | None, routed: bool = False
) -> tuple[bytes | None, Message]:
    """One message (the caller polled first); `ProtocolError` for a bad one, with the
    sender's identity attached as `.identity` so a server can still answer."""
    identity, _, message = receive_from(sock, max_bytes=max_bytes, types=types, routed=routed)
    return identity, message


def receive_from(
    sock: zmq.Socket, *, max_bytes: int, types: Collection[str] | None, routed: bool = True
) -> tuple[bytes | None, str | None, Message]:
    """As `receive`, with the sender's CurveZMQ public key (z85; None on a plaintext socket):
    the "User-Id" the ZAP handler set for the connection, so a server knows who sent what."""
    frames = sock.recv_multipart(copy=False)
    identity = None
    if routed:
        identity = frames[0].bytes
        frames = frames[1:]
    sender = _user_id(frames[0]) if frames else None
    try:
        message = decode([f.buffer for f in frames], max_bytes=max_bytes, types=types)
    except ProtocolError as exc:
        exc.identity = identity  # type: ignore[attr-defined]
        raise
    return identity, sender, message


def _user_id(frame: zmq.Frame) -> str | None:
    try:
        return frame.get("User-Id") or None
    except Exception:  # no such property: a plaintext or unauthenticated connection
        return None


def parse_peer(
    text: str, default_port: int | None = None, *, listen: bool = False
) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT') -> (host, port); port 0 (any free one) only to listen."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, "" if default_port is None else str(default_port)
    host = host.strip("[]")
    if not host or not port.isdigit() or not (0 if listen else 1) <= int(port) < 65536:
        raise ConfigError(f"peer {text!r:.80} must be HOST:PORT")
    return host, int(port)


def tcp_endpoint(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"
