"""Delaying TCP proxies for cluster benchmarks: latency on loopback links (no netem here).

`DelayProxy` holds every chunk it reads for `delay` seconds before passing it on, in each
direction (tests/cluster/test_cluster_netns.py uses it in its own process), and counts the
bytes it forwards: the TCP payload a worker link really carries (CurveZMQ-encrypted ZMTP
frames, heartbeats included). `ProxyProcess` runs one per target in a child process, so the
proxies' threads never wait on the coordinator's GIL; the delay is changed and the counts are
read through shared memory. With a `rate_bps` it also limits throughput as a switched LAN
would (`Ports`): every device (process) has a full-duplex port of that rate, and a chunk from
A to B waits for what A's uplink and B's downlink already carry, whichever proxy it crosses:
the coordinator's port carries a star's every copy, a worker's only its ring neighbours'.

    with ProxyProcess([("127.0.0.1", 5710)], delay_s=0.001) as proxies:  # RTT 2 ms
        endpoint = proxies.endpoints[0]
        proxies.set_delay(0.005)  # RTT 10 ms from the next chunk on
        sent, received = proxies.counts()[0]
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from types import TracebackType
from typing import Any


class DelayProxy:
    """A TCP proxy from 127.0.0.1:`port` to `target`: every chunk is forwarded `delay()`
    seconds after it was read (one way), and `count(direction, nbytes)` sees it on arrival
    (direction 0: towards the target, 1: back)."""

    def __init__(
        self,
        target: tuple[str, int],
        delay: Callable[[], float],
        count: Callable[[int, int], None] | None = None,
        ports: Ports | None = None,
    ) -> None:
        self.target, self.delay, self.ports = target, delay, ports
        self.count = count or (lambda direction, nbytes: None)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = [self._listener]
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                continue
            for sock in (client, upstream):  # ZeroMQ sets it too: no Nagle wait on small frames
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, upstream]
            ends = _owners(client, self.target[1]) if self.ports else (0, 0)
            for direction, (src, dst) in enumerate(((client, upstream), (upstream, client))):
                pending: queue.Queue[tuple[float, bytes]] = queue.Queue()
                route = ends if direction == 0 else ends[::-1]
                args = (src, pending, direction, route)
                threading.Thread(target=self._read, args=args, daemon=True).start()
                threading.Thread(target=self._write, args=(dst, pending), daemon=True).start()

    def _read(
        self,
        src: socket.socket,
        pending: queue.Queue[tuple[float, bytes]],
        d: int,
        route: tuple[int, int],
    ) -> None:
        """Chunks from `src`, each due after the delay (and, with ports, once the sending and
        receiving processes' ports `route` have carried it)."""
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            sent = time.monotonic() if self.ports is None else self.ports.carry(*route, len(data))
            pending.put((sent + self.delay(), data))
            if not data:
                return
            self.count(d, len(data))

    def _write(self, dst: socket.socket, pending: queue.Queue[tuple[float, bytes]]) -> None:
        while True:
            due, data = pending.get()
            time.sleep(max(0.0, due - time.monotonic()))
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._closed.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


class Ports:
    """Every process's network port, full duplex at `rate(pid)` bytes/s each way (0: not
    limited): a chunk leaves its sender's uplink and enters its receiver's downlink once both
    are free, and holds them for its bytes at the slower one's rate (cut-through switching)."""

    def __init__(self, rate: Callable[[int], float]) -> None:
        self.rate = rate
        self._free: dict[tuple[int, str], float] = {}
        self._lock = threading.Lock()

    def carry(self, src: int, dst: int, nbytes: int) -> float:
        """When `nbytes` from process `src` have reached process `dst`."""
        now = time.monotonic()
        ends = [((src, "up"), self.rate(src)), ((dst, "down"), self.rate(dst))]
        limited = [(port, rate) for port, rate in ends if rate > 0]
        if not limited:
            return now
        with self._lock:
            start = max(now, *(self._free.get(port, 0.0) for port, _ in limited))
            done = start + nbytes / min(rate for _, rate in limited)
            for port, _ in limited:
                self._free[port] = done
        return done


def _owners(client: socket.socket, target_port: int) -> tuple[int, int]:
    """The processes at the two ends of a proxied loopback connection, found by their ports:
    (the client's, the one listening on `target_port`); 0 where not found."""
    import psutil

    near, here = client.getpeername()[1], client.getsockname()[1]
    client_pid = target_pid = 0
    for conn in psutil.net_connections("tcp"):
        if conn.laddr and conn.laddr.port == near and conn.raddr and conn.raddr.port == here:
            client_pid = conn.pid or 0
        elif conn.laddr and conn.laddr.port == target_port and conn.status == psutil.CONN_LISTEN:
            target_pid = conn.pid or 0
    return client_pid, target_pid


def _serve(
    targets: Sequence[tuple[str, int]],
    delay: Any,
    counts: Any,
    conn: Connection,
    rates: tuple[float, float] = (0.0, 0.0),
) -> None:
    """The child process: one proxy per target, their ports sent back, until told to stop.
    `rates`: every worker's port and the coordinator's (this process's parent), bytes/s."""

    lock = threading.Lock()  # a proxy may carry several connections (a ping's, the engine's)

    def counter(index: int) -> Callable[[int, int], None]:
        def count(direction: int, nbytes: int) -> None:
            with lock:
                counts[2 * index + direction] += nbytes

        return count

    coordinator, (worker_rate, coordinator_rate) = os.getppid(), rates
    ports = None
    if worker_rate or coordinator_rate:
        ports = Ports(lambda pid: coordinator_rate if pid == coordinator else worker_rate)
    proxies = [DelayProxy(t, lambda: delay.value, counter(i), ports) for i, t in enumerate(targets)]
    conn.send([p.port for p in proxies])
    conn.recv()  # anything (or EOF) stops
    for proxy in proxies:
        proxy.close()


class ProxyProcess:
    """Delaying proxies to `targets` (host, port) in a child process; one-way delay
    `delay_s` (a round trip gains twice that). `endpoints[i]` reaches `targets[i]`. With
    `rate_bps`, every worker process's port carries that many bytes/s each way, and this
    process's (the coordinator's) `coordinator_rate_bps` (default: the same)."""

    def __init__(
        self,
        targets: Sequence[tuple[str, int]],
        delay_s: float = 0.0,
        rate_bps: float = 0.0,
        coordinator_rate_bps: float | None = None,
    ) -> None:
        ctx = mp.get_context("spawn")
        self._delay = ctx.Value("d", delay_s, lock=False)
        self._counts = ctx.Array("q", 2 * len(targets), lock=False)
        self._conn, child = ctx.Pipe()
        rates = (rate_bps, rate_bps if coordinator_rate_bps is None else coordinator_rate_bps)
        args = (list(targets), self._delay, self._counts, child, rates)
        self._proc = ctx.Process(target=_serve, args=args, daemon=True)
        self._proc.start()
        if not wait([self._conn, self._proc.sentinel], 60) or not self._conn.poll():
            self._proc.kill()
            raise RuntimeError(f"the delay proxies did not start (exit {self._proc.exitcode})")
        ports: list[int] = self._conn.recv()
        self.endpoints = [f"tcp://127.0.0.1:{port}" for port in ports]

    def set_delay(self, delay_s: float) -> None:
        """One-way delay of every chunk read from now on."""
        self._delay.value = delay_s

    def counts(self) -> list[tuple[int, int]]:
        """Bytes each proxy has read so far: (towards its worker, back from it)."""
        raw = list(self._counts)
        return [(raw[2 * i], raw[2 * i + 1]) for i in range(len(raw) // 2)]

    def close(self) -> None:
        with contextlib.suppress(OSError, BrokenPipeError):
            self._conn.send(None)
        self._proc.join(10)
        if self._proc.is_alive():
            self._proc.kill()

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
