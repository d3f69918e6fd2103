"""A TCP relay for cluster tests: a man in the middle who reads, tampers or replays, and an
address only the first to connect can use."""

from __future__ import annotations

import contextlib
import socket
import threading

from edge.cluster.transport import parse_peer


def connect(endpoint: str) -> socket.socket:
    sock = socket.create_connection(parse_peer(endpoint.removeprefix("tcp://")), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class Relay:
    """A TCP relay to `target` that records both directions and can flip one bit of the next
    chunk the coordinator sends (a man in the middle who reads, tampers or replays)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"tcp://127.0.0.1:{self.listener.getsockname()[1]}"
        self.sent: list[bytes] = []  # coordinator -> worker, chunk by chunk
        self.received = bytearray()  # worker -> coordinator
        self.tamper = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        near, _ = self.listener.accept()
        self.listener.close()  # one connection: a reconnect finds nobody
        far = connect(self.target)
        for src, dst, up in ((near, far, True), (far, near, False)):
            thread = threading.Thread(target=self._pump, args=(src, dst, up), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        src.settimeout(None)
        try:
            while data := src.recv(65536):
                if up and self.tamper.is_set():
                    self.tamper.clear()
                    data = data[:-1] + bytes([data[-1] ^ 1])
                (self.sent.append if up else self.received.extend)(data)
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(5)
