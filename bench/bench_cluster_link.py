"""Round-trip latency of one decode step's activations over a cluster link, loopback or netns.

A [1, 1, H] float32 frame (H = 576: SmolLM2-135M, 1536: Qwen2.5-Coder-1.5B) goes to an echo
server in another process and back: through edge's transport (typed frames, checked on both
ends) with CurveZMQ on and off, through bare pyzmq (no frame checks, no poller: ZeroMQ's own
cost) and through a plain TCP socket (4-byte length + bytes, the floor). Beside them, the
candidate edge did not take: a 2-process torch.distributed gloo group all-reducing a [1, H]
float32 tensor (a reduction is one exchange, as an echo is). Prints median, p90 and p99 per
round, the ratios, and CPU per round of both processes (psutil; 10 ms ticks, so server CPU is
coarse). Batches of the links alternate, so a shared machine's drifting load hits each alike.
Also asks gloo for its TLS transport (GLOO_DEVICE_TRANSPORT=TCP_TLS) and prints the answer.

`--netns` runs the same links between two network namespaces joined by a veth pair (needs
root, or CAP_NET_ADMIN and CAP_SYS_ADMIN; skipped with a message where `ip netns` is refused).

    python bench/bench_cluster_link.py [--rounds 3000] [--netns] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODES = ("curve", "plain", "zmq", "tcp", "gloo")
SIZES = (576, 1536)
WARMUP, BATCHES = 200, 10
GLOO_TIMEOUT = timedelta(seconds=60)


@dataclass(frozen=True)
class Net:
    """Where the two ends live: this side's and the server's address and interface, and the
    namespace the server runs in (None: this one)."""

    here: str
    there: str
    iface_here: str
    iface_there: str
    peer_netns: str | None = None


LOOPBACK = Net("127.0.0.1", "127.0.0.1", "lo", "lo")
NETNS_PREFIX = "10.231.77."  # .1 the client's namespace, .2 the server's, on a veth pair


# ---- the echo server (a child process) ----------------------------------------------------------
def serve(mode: str) -> None:
    """Echo until stdin closes (gloo: all-reduce the given number of rounds); prints the port
    first."""
    config = json.loads(sys.stdin.readline())
    host = config["host"]
    if mode == "gloo":
        _gloo_peer(config)
        return
    if mode == "tcp":
        listener = socket.socket()
        listener.bind((host, 0))
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
        print(sock.bind_to_random_port(f"tcp://{host}"), flush=True)
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
    sock, endpoints = server_socket(ctx, keys, LinkConfig(), [f"tcp://{host}:0"])
    print(endpoints[0].rsplit(":", 1)[1], flush=True)
    while True:
        identity, message = receive(sock, max_bytes=1 << 24, types=None, routed=True)
        if message.type == "stop":
            return
        send(sock, Message("echo", message.id, {}, message.buffers), identity)


def _gloo_peer(config: dict[str, Any]) -> None:
    """Rank 1: join the parent's store, all-reduce exactly as many times as rank 0 will."""
    import torch
    import torch.distributed as dist

    os.environ["GLOO_SOCKET_IFNAME"] = config["iface"]
    store = dist.TCPStore(config["store_host"], config["store_port"], 2, False, GLOO_TIMEOUT)
    dist.init_process_group("gloo", store=store, rank=1, world_size=2, timeout=GLOO_TIMEOUT)
    source = torch.ones(1, config["hidden"])
    tensor = source.clone()
    for _ in range(config["rounds"]):
        tensor.copy_(source)
        dist.all_reduce(tensor)
    dist.destroy_process_group()


def probe_gloo_tls() -> str:
    """What a gloo group says when asked for TLS (in a fresh process: the variable is read
    when the group's device is made)."""
    code = (
        "import torch.distributed as d\n"
        "d.init_process_group('gloo', store=d.HashStore(), rank=0, world_size=1)\n"
        "print('accepted: a gloo group came up with GLOO_DEVICE_TRANSPORT=TCP_TLS')\n"
    )
    env = {**os.environ, "GLOO_DEVICE_TRANSPORT": "TCP_TLS", "GLOO_SOCKET_IFNAME": "lo"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    lines = (done.stdout + done.stderr).strip().splitlines()
    return f"exit {done.returncode}: {lines[-1] if lines else '(no output)'}"


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
    """One echo server process (gloo: rank 1) and the client side of its link."""

    def __init__(self, mode: str, hidden: int, rounds: int, net: Net) -> None:
        from edge.cluster.keys import new_keypair

        server_keys, client_keys = new_keypair(), new_keypair()
        prefix = ["ip", "netns", "exec", net.peer_netns] if net.peer_netns else []
        self.child = subprocess.Popen(  # `ip netns exec` execs: the pid is the server's
            [*prefix, sys.executable, __file__, "--serve", mode],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
        )
        assert self.child.stdin and self.child.stdout
        secrets = {"public": server_keys.public, "secret": server_keys.secret}
        config: dict[str, Any] = {"server": secrets, "host": net.there}
        self.frame = np.random.default_rng(0).standard_normal((1, 1, hidden), dtype=np.float32)
        self.times: list[float] = []
        self.client_cpu = self.server_cpu = 0.0
        self.server = psutil.Process(self.child.pid)
        self.once: Callable[[], object]
        if mode == "gloo":
            import torch
            import torch.distributed as dist

            os.environ["GLOO_SOCKET_IFNAME"] = net.iface_here
            store = dist.TCPStore(net.here, 0, 2, True, GLOO_TIMEOUT, wait_for_workers=False)
            config |= {"store_host": net.here, "store_port": store.port, "hidden": hidden}
            config |= {"rounds": WARMUP + rounds, "iface": net.iface_there}
            self.child.stdin.write(json.dumps(config) + "\n")
            self.child.stdin.flush()
            dist.init_process_group("gloo", store=store, rank=0, world_size=2, timeout=GLOO_TIMEOUT)
            self.source = torch.from_numpy(self.frame.reshape(1, hidden))
            self.tensor = self.source.clone()
            self.once = self._gloo
        else:
            self.child.stdin.write(json.dumps(config) + "\n")
            self.child.stdin.flush()
            port = int(self.child.stdout.readline())
        if mode == "tcp":
            self.conn = socket.create_connection((net.there, port))
            self.conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.payload = struct.pack("<I", self.frame.nbytes) + self.frame.tobytes()
            self.once = self._tcp
        elif mode == "zmq":
            import zmq

            self.raw = zmq.Context.instance().socket(zmq.DEALER)
            self.raw.setsockopt(zmq.LINGER, 0)
            self.raw.connect(f"tcp://{net.there}:{port}")
            self.once = self._zmq
        elif mode in ("curve", "plain"):
            from edge.cluster.client import WorkerClient

            self.link = WorkerClient(
                f"tcp://{net.there}:{port}",
                server_keys.public if mode == "curve" else None,
                client_keys if mode == "curve" else None,
            )
            self.once = lambda: self.link.request("echo", None, (self.frame,))
        for _ in range(WARMUP):
            self.once()

    def _tcp(self) -> None:
        self.conn.sendall(self.payload)
        np.frombuffer(_read(self.conn, len(self.payload)), np.float32, offset=4)

    def _zmq(self) -> None:
        self.raw.send_multipart([b"echo", self.frame])
        np.frombuffer(self.raw.recv_multipart()[1], np.float32)

    def _gloo(self) -> None:
        import torch.distributed as dist

        self.tensor.copy_(self.source)
        dist.all_reduce(self.tensor)

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
        elif hasattr(self, "conn"):
            self.conn.close()
        else:  # gloo: rank 1 stops after its last round
            import torch.distributed as dist

            dist.destroy_process_group()
        assert self.child.stdin
        self.child.stdin.close()
        try:
            self.child.wait(30)
        except subprocess.TimeoutExpired:
            self.child.kill()
        n = len(self.times)
        return {
            "median_us": float(np.median(self.times) * 1e6),
            "p90_us": float(np.percentile(self.times, 90) * 1e6),
            "p99_us": float(np.percentile(self.times, 99) * 1e6),
            "client_cpu_us": self.client_cpu / n * 1e6,
            "server_cpu_us": self.server_cpu / n * 1e6,
        }


def measure(rounds: int, net: Net) -> dict[str, dict[str, float]]:
    where = f"netns {net.here} -> {net.there} (veth)" if net.peer_netns else "loopback"
    print(f"{where}; load average {Path('/proc/loadavg').read_text().split(' ', 3)[:3]}")
    print(f"gloo with GLOO_DEVICE_TRANSPORT=TCP_TLS: {probe_gloo_tls()}", flush=True)
    print(
        f"{'H':>5} {'link':6} {'median':>9} {'p90':>9} {'p99':>9} {'cpu client':>11} {'server':>9}"
    )
    per_batch = max(1, rounds // BATCHES)
    results = {}
    for hidden in SIZES:
        links = {mode: Link(mode, hidden, per_batch * BATCHES, net) for mode in MODES}
        # Interleaved batches: a shared machine's load drifts, and every link sees the same.
        for _ in range(BATCHES):
            for link in links.values():
                link.batch(per_batch)
        for mode, link in links.items():
            r = results[f"{mode}-{hidden}"] = link.close()
            print(
                f"{hidden:5d} {mode:6} {r['median_us']:7.1f}us {r['p90_us']:7.1f}us "
                f"{r['p99_us']:7.1f}us {r['client_cpu_us']:9.1f}us {r['server_cpu_us']:7.1f}us",
                flush=True,
            )
        curve, plain, raw, tcp, gloo = (results[f"{m}-{hidden}"]["median_us"] for m in MODES)
        print(
            f"      H={hidden}: CurveZMQ / plain {curve / plain:.2f}x, plain / bare pyzmq "
            f"{plain / raw:.2f}x, bare pyzmq / TCP socket {raw / tcp:.2f}x, CurveZMQ / TCP "
            f"{curve / tcp:.2f}x, CurveZMQ / gloo {curve / gloo:.2f}x, gloo / TCP {gloo / tcp:.2f}x"
        )
    print(f"load average after {Path('/proc/loadavg').read_text().split(' ', 3)[:3]}")
    return results


def in_netns(args: argparse.Namespace) -> None:
    """Make two namespaces joined by a veth pair, run this script's client in one against
    servers in the other, and remove both (and anything left running in them) whatever
    happens."""
    tag = os.getpid()
    client_ns, server_ns = f"edge-bench-{tag}-c", f"edge-bench-{tag}-s"
    made: list[str] = []
    try:
        try:
            for ns in (client_ns, server_ns):
                _ip("netns", "add", ns)
                made.append(ns)
        except (OSError, RuntimeError) as exc:
            print(f"--netns skipped: `ip netns add` is not permitted here: {exc}")
            return
        # One veth0 in each: the pair's two ends, named alike inside their namespaces.
        _ip(
            *f"link add veth0 netns {client_ns} type veth peer name veth0 netns {server_ns}".split()
        )
        for n, ns in enumerate((client_ns, server_ns), 1):
            _ip("-n", ns, "addr", "add", f"{NETNS_PREFIX}{n}/24", "dev", "veth0")
            _ip("-n", ns, "link", "set", "veth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        command = ["ip", "netns", "exec", client_ns, sys.executable, __file__]
        command += ["--rounds", str(args.rounds), "--inside", server_ns]
        if args.json:
            command += ["--json", str(args.json.resolve())]
        subprocess.run(command, check=True, cwd=REPO)
    finally:
        _remove(made)


def _ip(*argv: str) -> None:
    done = subprocess.run(["ip", *argv], capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ip {' '.join(argv)}: {done.stderr.strip()}")


def _remove(namespaces: list[str]) -> None:
    for ns in namespaces:
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
        for pid in pids.stdout.split():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), 9)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3000, help="rounds per link")
    parser.add_argument("--netns", action="store_true", help="across two network namespaces")
    parser.add_argument("--serve", choices=MODES, help=argparse.SUPPRESS)
    parser.add_argument("--inside", metavar="SERVER_NETNS", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.netns:
        in_netns(args)
        return
    net = LOOPBACK
    if args.inside:
        net = Net(f"{NETNS_PREFIX}1", f"{NETNS_PREFIX}2", "veth0", "veth0", args.inside)
    results = measure(args.rounds, net)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
