"""Round-trip latency of one decode step's activations over a cluster link, on loopback.

A [1, 1, H] float32 frame (H = 576: SmolLM2-135M, 1536: Qwen2.5-Coder-1.5B) goes to an echo
server in another process and back: through edge's transport (typed frames, checked on both
ends) with CurveZMQ on and off, through bare pyzmq (no frame checks, no poller: ZeroMQ's own
cost) and through a plain TCP socket (4-byte length + bytes, the floor). Prints median and
p99 round trip, the ratios, and CPU per round trip of both processes (psutil; 10 ms ticks, so
server CPU is coarse). Batches of the links alternate, so a shared machine's drifting load
hits each alike.

    python bench/bench_cluster_link.py [--rounds 5000] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("curve", "plain", "zmq", "tcp")
SIZES = (576, 1536)


# ---- the echo server (a child process) ----------------------------------------------------------
def serve(mode: str) -> None:
    """Echo until stdin closes; prints the port first."""
    config = json.loads(sys.stdin.readline())
    if mode == "tcp":
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        print(listener.getsockname()[1], flush=True)
        conn, _ = listener.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            head = _read(conn, 4)
            if not head:
                return
            conn.sendall(head + _read(conn, struct.unpack("<I", head)[0]))
    import zmq

    if mode == "zmq":  # pyzmq alone: no frame checks, no poller, default options
        ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        print(sock.bind_to_random_port("tcp://127.0.0.1"), flush=True)
        while True:
            sock.send_multipart(sock.recv_multipart())

    from edge.cluster.frames import Message
    from edge.cluster.keys import CurveKeys
    from edge.cluster.transport import LinkConfig, receive, send, server_socket

    keys = CurveKeys(**config["server"]) if mode == "curve" else None
    ctx = zmq.Context()
    if keys is not None:
        from zmq.auth.thread import ThreadAuthenticator

        auth = ThreadAuthenticator(ctx)
        auth.start()
        auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
    sock, endpoints = server_socket(ctx, keys, LinkConfig(), ["tcp://127.0.0.1:0"])
    print(endpoints[0].rsplit(":", 1)[1], flush=True)
    while True:
        identity, message = receive(sock, max_bytes=1 << 24, types=None, routed=True)
        if message.type == "stop":
            return
        send(sock, Message("echo", message.id, {}, message.buffers), identity)


def _read(conn: socket.socket, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = conn.recv(left)
        if not chunk:
            return b""
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# ---- the client -----------------------------------------------------------------------------
class Link:
    """One echo server process and the client side of its link."""

    def __init__(self, mode: str, hidden: int) -> None:
        from edge.cluster.keys import new_keypair

        server_keys, client_keys = new_keypair(), new_keypair()
        self.child = subprocess.Popen(
            [sys.executable, __file__, "--serve", mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.child.stdin and self.child.stdout
        secrets = {"public": server_keys.public, "secret": server_keys.secret}
        self.child.stdin.write(json.dumps({"server": secrets}) + "\n")
        self.child.stdin.flush()
        port = int(self.child.stdout.readline())
        self.server = psutil.Process(self.child.pid)
        self.frame = np.random.default_rng(0).standard_normal((1, 1, hidden), dtype=np.float32)
        self.times: list[float] = []
        self.client_cpu = self.server_cpu = 0.0
        if mode == "tcp":
            self.conn = socket.create_connection(("127.0.0.1", port))
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.payload = struct.pack("<I", self.frame.nbytes) + self.frame.tobytes()
            self.once = self._tcp
        elif mode == "zmq":
            import zmq

            self.raw = zmq.Context.instance().socket(zmq.DEALER)
            self.raw.setsockopt(zmq.LINGER, 0)
            self.raw.connect(f"tcp://127.0.0.1:{port}")
            self.once = self._zmq
        else:
            from edge.cluster.client import WorkerClient

            self.link = WorkerClient(
                f"tcp://127.0.0.1:{port}",
                server_keys.public if mode == "curve" else None,
                client_keys if mode == "curve" else None,
            )
            self.once = lambda: self.link.request("echo", None, (self.frame,))
        for _ in range(200):
            self.once()

    def _tcp(self) -> None:
        self.conn.sendall(self.payload)
        np.frombuffer(_read(self.conn, len(self.payload)), np.float32, offset=4)

    def _zmq(self) -> None:
        self.raw.send_multipart([b"echo", self.frame])
        np.frombuffer(self.raw.recv_multipart()[1], np.float32)

    def batch(self, rounds: int) -> None:
        cpu, server = time.process_time(), sum(self.server.cpu_times()[:2])
        for _ in range(rounds):
            start = time.perf_counter()
            self.once()
            self.times.append(time.perf_counter() - start)
        self.client_cpu += time.process_time() - cpu
        self.server_cpu += sum(self.server.cpu_times()[:2]) - server

    def close(self) -> dict[str, float]:
        if hasattr(self, "link"):
            with contextlib.suppress(Exception):  # the server stops without answering
                self.link.request("stop", timeout_s=0.2)
            self.link.close()
        elif hasattr(self, "raw"):
            self.raw.close(0)
            self.child.kill()
        else:
            self.conn.close()
        assert self.child.stdin
        self.child.stdin.close()
        try:
            self.child.wait(5)
        except subprocess.TimeoutExpired:
            self.child.kill()
        n = len(self.times)
        return {
            "median_us": float(np.median(self.times) * 1e6),
            "p99_us": float(np.percentile(self.times, 99) * 1e6),
            "client_cpu_us": self.client_cpu / n * 1e6,
            "server_cpu_us": self.server_cpu / n * 1e6,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000, help="round trips per link")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    print(f"{'H':>5} {'link':6} {'median':>9} {'p99':>9} {'cpu client':>11} {'cpu server':>11}")
    results = {}
    for hidden in SIZES:
        links = {mode: Link(mode, hidden) for mode in MODES}
        # Interleaved batches: a shared machine's load drifts, and every link sees the same.
        for _ in range(10):
            for link in links.values():
                link.batch(max(1, args.rounds // 10))
        for mode, link in links.items():
            r = results[f"{mode}-{hidden}"] = link.close()
            print(
                f"{hidden:5d} {mode:6} {r['median_us']:7.1f}us {r['p99_us']:7.1f}us "
                f"{r['client_cpu_us']:9.1f}us {r['server_cpu_us']:9.1f}us",
                flush=True,
            )
        curve, plain, raw, tcp = (results[f"{m}-{hidden}"]["median_us"] for m in MODES)
        print(
            f"      H={hidden}: CurveZMQ / plain {curve / plain:.2f}x, plain / bare pyzmq "
            f"{plain / raw:.2f}x, bare pyzmq / TCP socket {raw / tcp:.2f}x, CurveZMQ / TCP "
            f"{curve / tcp:.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
