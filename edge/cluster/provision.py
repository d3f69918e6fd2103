"""`edge cluster provision DEVICE`: join a board attached over USB serial to a cluster.

A board with no keyboard or screen cannot be shown a pairing code, but it can be plugged into
the coordinator. Over the serial line the coordinator hands it what `edge cluster pair --code
CODE --peer HOST:PORT` needs (the pairing address, a fresh one-time code, the cluster name);
the board pairs over the network with the usual handshake (`pairing.join`), so the keys are
exchanged and confirmed exactly as for any worker, and reports what it is (node id, memory,
CPU, profile). The coordinator checks that the node that paired is the node that reported.

The protocol is one JSON object per line (UTF-8, "\\n"-terminated, "\\r" tolerated), each at
most `max_line_bytes`, with a version and a type:

    board -> coordinator    {"v": 1, "type": "ready", "node_id": ...}   (every second)
    coordinator -> board    {"v": 1, "type": "offer", "cluster", "pair": "HOST:PORT", "code"}
    board -> coordinator    {"v": 1, "type": "joined", "node_id", "name", "machine", "cores",
                             "memory_available", "memory_budget", "profile": {...}}
    either                  {"v": 1, "type": "error", "message": ..., "final": bool}

The board announces itself until an offer comes, so either side may start first. A line that
is not such an object (console noise, a truncated or oversized line, a wrong field) is
refused: the board answers it with an error line, the coordinator ignores it; neither acts on
it; an error with "final": true ends the session. Every wait is bounded by the session's
deadline. The code crosses the serial cable in the
clear: whoever holds the cable holds the board anyway, and the code is single-use.
"""

from __future__ import annotations

import json
import math
import platform
import socket
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from edge.cluster.errors import ClusterError, ClusterUnavailableError, ProtocolError
from edge.cluster.keys import KeyStore, check_name
from edge.errors import ConfigError

VERSION = 1
MAX_LINE_BYTES = 4096
TYPES = frozenset({"ready", "offer", "joined", "error"})
MAX_PROFILE_FIELDS = 16


class ProvisionError(ClusterError):
    """Provisioning over serial failed: no answer in time, or the other side refused."""


class SerialPort(Protocol):
    """What the protocol needs of a port (pyserial's `Serial`, or a test double)."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def flush(self) -> None: ...


@dataclass(frozen=True)
class ProvisionConfig:
    """Timings and limits of one provisioning session. `timeout_s` bounds the whole session;
    `pair_timeout_s` how long the code stays valid after it was offered."""

    timeout_s: float = 120.0
    pair_timeout_s: float = 40.0
    ready_interval_s: float = 1.0
    max_line_bytes: int = MAX_LINE_BYTES

    def __post_init__(self) -> None:
        for name in ("timeout_s", "pair_timeout_s", "ready_interval_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}={getattr(self, name)}; must be > 0")
        if not 256 <= self.max_line_bytes <= 1 << 20:
            raise ConfigError(f"max_line_bytes={self.max_line_bytes}; 256 .. 1 MiB")


@dataclass(frozen=True)
class Capabilities:
    """What a board reports of itself once paired."""

    node_id: str
    name: str
    machine: str
    cores: int
    memory_available: int
    memory_budget: int
    profile: Mapping[str, str | int | float | bool] = field(default_factory=dict)

    def to_meta(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "name": self.name,
            "machine": self.machine,
            "cores": self.cores,
            "memory_available": self.memory_available,
            "memory_budget": self.memory_budget,
            "profile": dict(self.profile),
        }


@dataclass(frozen=True)
class Provisioned:
    """A provisioned board: the cluster it joined, its paired node id, what it reported."""

    cluster: str
    capabilities: Capabilities


# ---- lines --------------------------------------------------------------------------------------
class LineChannel:
    """JSON lines over a serial port, each at most `max_line_bytes`."""

    def __init__(self, port: SerialPort, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.port, self.max_line_bytes = port, max_line_bytes
        self._buffer = bytearray()
        self._discarding = False  # inside an oversized line: drop up to its newline

    def send(self, kind: str, **fields: Any) -> None:
        data = json.dumps({"v": VERSION, "type": kind, **fields}, separators=(",", ":")).encode()
        if len(data) >= self.max_line_bytes:
            raise ProtocolError(f"a {kind!r} line of {len(data)} bytes is over the limit")
        try:
            self.port.write(data + b"\n")
            self.port.flush()
        except OSError as exc:  # pyserial's SerialException too: an unplugged cable
            raise ProvisionError(f"the serial line failed: {exc}") from exc

    def receive(self, deadline: float) -> dict[str, Any] | None:
        """The next valid message, None at the deadline; `ProtocolError` for a refused line
        (the channel stays usable)."""
        while True:
            newline = self._buffer.find(b"\n")
            if newline >= 0:
                line = bytes(self._buffer[:newline])
                del self._buffer[: newline + 1]
                if self._discarding:
                    self._discarding = False
                    continue  # the tail of an oversized line, already refused
                return parse_line(line, self.max_line_bytes)
            if len(self._buffer) > self.max_line_bytes:
                self._buffer.clear()
                self._discarding = True
                raise ProtocolError(f"a line over {self.max_line_bytes} bytes")
            if time.monotonic() >= deadline:
                return None
            try:
                chunk = self.port.read(max(1, min(self.port.in_waiting, self.max_line_bytes)))
            except OSError as exc:
                raise ProvisionError(f"the serial line failed: {exc}") from exc
            if self._discarding and chunk:
                cut = chunk.find(b"\n")
                if cut < 0:
                    continue
                self._discarding, chunk = False, chunk[cut + 1 :]
            self._buffer += chunk


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def parse_line(line: bytes, max_line_bytes: int = MAX_LINE_BYTES) -> dict[str, Any]:
    """One line -> a message of a known type and version, or `ProtocolError`."""
    if len(line) > max_line_bytes:
        raise ProtocolError(f"a line over {max_line_bytes} bytes")
    try:
        message = json.loads(line.rstrip(b"\r").decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"not a JSON line: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError("a line must hold a JSON object")
    if message.get("v") != VERSION or isinstance(message.get("v"), bool):
        raise ProtocolError(f"protocol version {message.get('v')!r:.20}; this side speaks 1")
    if message.get("type") not in TYPES:
        raise ProtocolError(f"unknown message type {message.get('type')!r:.40}")
    return message


def _string(message: Mapping[str, Any], name: str, limit: int = 256) -> str:
    value = message.get(name)
    if not isinstance(value, str) or not 0 < len(value) <= limit or not value.isprintable():
        raise ProtocolError(f"{message.get('type')}: {name} must be a short printable string")
    return value


def _count(message: Mapping[str, Any], name: str) -> int:
    value = message.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 62:
        raise ProtocolError(f"{message.get('type')}: {name} must be a non-negative integer")
    return value


def parse_capabilities(message: Mapping[str, Any]) -> Capabilities:
    """A "joined" message -> `Capabilities`; `ProtocolError` for any wrong field."""
    profile = message.get("profile", {})
    if not isinstance(profile, dict) or len(profile) > MAX_PROFILE_FIELDS:
        raise ProtocolError(f"joined: profile must be an object of <= {MAX_PROFILE_FIELDS}")
    for key, value in profile.items():
        ok = isinstance(value, (str, int, float, bool)) and len(key) <= 64
        if not ok or (isinstance(value, str) and len(value) > 256):
            raise ProtocolError(f"joined: profile field {key!r:.40} is not a short scalar")
        if isinstance(value, float) and not math.isfinite(value):
            raise ProtocolError(f"joined: profile field {key!r:.40} is not finite")
    cores = _count(message, "cores")
    if not 0 < cores <= 4096:
        raise ProtocolError("joined: cores must be 1 .. 4096")
    return Capabilities(
        node_id=_string(message, "node_id", 128),
        name=_string(message, "name", 128),
        machine=_string(message, "machine", 64),
        cores=cores,
        memory_available=_count(message, "memory_available"),
        memory_budget=_count(message, "memory_budget"),
        profile=profile,
    )


# ---- ports --------------------------------------------------------------------------------------
def require_serial() -> None:
    try:
        import serial  # noqa: F401
    except ImportError as exc:
        raise ClusterUnavailableError(
            'provisioning over serial needs pyserial: pip install "edge[cluster]"'
        ) from exc


def open_serial(device: str, baudrate: int = 115200) -> Any:
    """`device` (e.g. /dev/ttyUSB0) as a raw 8N1 port with short reads."""
    require_serial()
    import serial

    try:
        return serial.Serial(device, baudrate=baudrate, timeout=0.05, write_timeout=5.0)
    except (serial.SerialException, OSError, ValueError) as exc:
        raise ConfigError(f"cannot open serial device {device}: {exc}") from exc


def capabilities(node_id: str, measure_profile: bool = False) -> Capabilities:
    """This machine's report: cores and memory always, measured rates when asked."""
    from devices.memory_info import read_memory
    from edge.step_inputs import usable_threads

    memory = read_memory()
    profile: dict[str, str | int | float | bool] = {}
    if measure_profile:
        from devices.microbench import measured_profile

        p = measured_profile()
        profile = {
            "memory_bandwidth_gbs": p.memory_bandwidth_gbs,
            "fp32_gflops": p.fp32_gflops,
            "int8_gops": p.int8_gops,
            "source": p.source,
        }
    return Capabilities(
        node_id=node_id,
        name=(socket.gethostname() or node_id)[:64],
        machine=(platform.machine() or "unknown")[:64],
        cores=usable_threads(),
        memory_available=int(memory.available),
        memory_budget=int(memory.budget),
        profile=profile,
    )


# ---- the board ----------------------------------------------------------------------------------
def provisioned(
    port: SerialPort,
    store: KeyStore | None = None,
    config: ProvisionConfig | None = None,
    *,
    measure_profile: bool = False,
) -> Provisioned:
    """The board's side: announce, take an offer, pair over the network, report back.
    Refused lines get an error line and the board keeps waiting (until the deadline)."""
    from edge.cluster.pairing import join, normalize_code
    from edge.cluster.transport import parse_peer, tcp_endpoint

    config = config or ProvisionConfig()
    store = store or KeyStore()
    node_id, _ = store.node()
    channel = LineChannel(port, config.max_line_bytes)
    deadline = time.monotonic() + config.timeout_s
    next_ready = 0.0
    while (now := time.monotonic()) < deadline:
        if now >= next_ready:
            channel.send("ready", node_id=node_id)
            next_ready = now + config.ready_interval_s
        try:
            message = channel.receive(min(deadline, next_ready))
            if message is None or message["type"] != "offer":
                continue  # a timeout, or an echo of our own kind of line
            cluster = check_name(_string(message, "cluster", 63))
            host, pair_port = parse_peer(_string(message, "pair"))
            code = normalize_code(_string(message, "code", 16))
        except (ProtocolError, ConfigError) as exc:
            channel.send("error", message=f"refused: {exc}"[:512])
            continue
        try:
            paired = join(store, tcp_endpoint(host, pair_port), code)
        except ClusterError as exc:
            channel.send("error", message=f"pairing failed: {exc}"[:512], final=True)
            raise ProvisionError(f"pairing with {host}:{pair_port} failed: {exc}") from exc
        if paired.cluster != cluster:
            message_ = f"paired with cluster {paired.cluster!r}, offered {cluster!r}"
            channel.send("error", message=message_, final=True)
            raise ProvisionError(message_)
        report = capabilities(node_id, measure_profile)
        channel.send("joined", **report.to_meta())
        return Provisioned(paired.cluster, report)
    raise ProvisionError(f"no offer from a coordinator within {config.timeout_s:g} s")


# ---- the coordinator ----------------------------------------------------------------------------
def provision(
    port: SerialPort,
    cluster: str,
    *,
    store: KeyStore | None = None,
    listen: str = "tcp://0.0.0.0:5711",
    address: str | None = None,
    config: ProvisionConfig | None = None,
    on_code: Any = None,
) -> Provisioned:
    """The coordinator's side: wait for the board, offer it `address`:port and a fresh code
    for `cluster`, let it pair, and return what it reported. `address` is the host the board
    reaches this machine at (default: this machine's first usable interface address).

    On failure the pairing listener stays open until its `pair_timeout_s` runs out (a zmq
    socket cannot be closed from another thread): the code is single-use and expires."""
    from edge.cluster.pairing import Paired, PairingServer

    config = config or ProvisionConfig()
    store = store or KeyStore()
    check_name(cluster)
    store.cluster_keys(cluster)  # PairingError naming `edge cluster init` when missing
    channel = LineChannel(port, config.max_line_bytes)
    deadline = time.monotonic() + config.timeout_s
    _reset_input(port)
    board = _await(channel, deadline, {"ready"})
    if board is None:
        raise ProvisionError(
            f"no board announced itself on the serial line within {config.timeout_s:g} s "
            "(is `edge cluster provisioned DEVICE` running on it?)"
        )
    server = PairingServer(store, cluster, listen)
    bound_port = int(server.endpoints[0].rsplit(":", 1)[1])
    host = address or _default_address()
    result: dict[str, Paired | BaseException] = {}

    def serve() -> None:
        try:
            result["paired"] = server.serve(min(config.pair_timeout_s, config.timeout_s))
        except BaseException as exc:  # reported to the caller below
            result["error"] = exc

    thread = threading.Thread(target=serve, name="edge-provision-pairing", daemon=True)
    thread.start()
    if on_code is not None:
        on_code(server.code)
    pair = f"[{host}]:{bound_port}" if ":" in host else f"{host}:{bound_port}"
    channel.send("offer", cluster=cluster, pair=pair, code=server.code)
    refusals: list[str] = []
    reply = _await(channel, deadline, {"joined", "error"}, refusals)
    if reply is None:
        why = f" (it last said: {refusals[-1]})" if refusals else ""
        raise ProvisionError(f"the board did not report back within {config.timeout_s:g} s{why}")
    if reply["type"] == "error":
        raise ProvisionError(f"the board refused: {str(reply.get('message', ''))[:512]}")
    thread.join(max(0.0, min(10.0, deadline - time.monotonic())))
    paired = result.get("paired")
    if not isinstance(paired, Paired):
        raise ProvisionError(f"the board reported joining, but no pairing: {result.get('error')}")
    report = parse_capabilities(reply)
    if report.node_id != paired.peer.node_id:
        raise ProvisionError(
            f"the board reported node {report.node_id!r:.80} but {paired.peer.node_id!r} paired"
        )
    return Provisioned(cluster, report)


def _await(
    channel: LineChannel, deadline: float, kinds: set[str], refusals: list[str] | None = None
) -> dict[str, Any] | None:
    """The next message of one of `kinds`; refused lines and other kinds are skipped, and so
    are the board's non-final errors (its refusal of a line not ours), kept in `refusals`."""
    while time.monotonic() < deadline:
        try:
            message = channel.receive(deadline)
        except ProtocolError:
            continue  # console noise or a broken line: never acted on
        if message is None:
            return None
        if message["type"] not in kinds:
            continue
        if message["type"] == "error" and message.get("final") is not True:
            if refusals is not None:
                refusals.append(str(message.get("message", ""))[:512])
            continue
        if message["type"] == "joined":
            try:
                parse_capabilities(message)
            except ProtocolError:
                continue
        return message
    return None


def _reset_input(port: SerialPort) -> None:
    """Drop what queued before this session (an old board's announcements)."""
    reset = getattr(port, "reset_input_buffer", None)
    if callable(reset):
        reset()


def _default_address() -> str:
    from edge.cluster.discovery import select_interfaces

    for interface in select_interfaces():
        for address in interface.addresses:
            return address
    raise ConfigError("no network interface to offer the board; pass --address HOST")
