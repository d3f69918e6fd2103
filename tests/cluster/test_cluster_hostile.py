"""Hostile peers on the network: garbage, truncated and oversized bytes to the pairing
listener and to a worker, strangers and other clusters' coordinators, a relay that reads,
tampers with or replays a session. None of them pairs, reads or drives anything, and the
legitimate pairing and session go on with the right values. And a worker whose Python has no
torch (as on a board) serves both a pipeline slice and a tensor-parallel share."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from edge.cluster.client import WorkerClient
from edge.cluster.errors import AuthenticationError, PairingError, PeerLostError
from edge.cluster.frames import Message, decode
from edge.cluster.keys import KeyStore
from edge.cluster.pairing import PairingServer, join
from edge.cluster.transport import LinkConfig, client_socket
from edge.package import open_package
from tests.cluster.conftest import REPO, WorkerProcess, pair
from tests.cluster.relay import Relay, connect
from tests.import_blocker import BLOCK_EXPORT_STACK

pytestmark = pytest.mark.timeout(120)
# Bounded everywhere: a failure here is an error in seconds, never a hang.
FAST = LinkConfig(connect_timeout_s=3.0, request_timeout_s=10.0)
PROMPT = [1, 17, 42, 99, 5, 230, 64, 12]
MARKER = "a-marker-only-the-worker-may-read"

# ---- raw ZMTP 3.0 (RFC 23), to send what no ZeroMQ library would -------------------------------


def _greeting(mechanism: bytes) -> bytes:
    """Signature, version 3.0, mechanism, as-server = 0, filler: 64 bytes."""
    return b"\xff" + b"\0" * 8 + b"\x7f\x03\x00" + mechanism.ljust(20, b"\0") + b"\0" * 32


def _command(body: bytes) -> bytes:
    return bytes([0x04, len(body)]) + body  # a short command frame


READY = _command(b"\x05READY\x0bSocket-Type" + (6).to_bytes(4, "big") + b"DEALER")


def _null_session(endpoint: str) -> socket.socket:
    """A raw connection through the NULL handshake (the pairing listener's), ready for frames.
    The greeting goes alone: libzmq refuses a READY that arrives in the greeting's segment."""
    sock = connect(endpoint)
    sock.sendall(_greeting(b"NULL"))
    _read(sock, 64)
    sock.sendall(READY)
    return sock


def _read(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def _dropped_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the peer closes `sock` within `seconds` (whatever it sends first is read)."""
    deadline = time.monotonic() + seconds
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if not sock.recv(4096):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        pass
    return False


def _answer(sock: zmq.Socket, frames: list) -> Message:
    sock.send_multipart(frames)
    assert sock.poll(5000), "no answer"
    return decode(sock.recv_multipart(), max_bytes=1 << 20)


def _header(kind: str, meta: dict, buffers: list | None = None, **extra: Any) -> bytes:
    return json.dumps(
        {"v": 1, "type": kind, "id": 3, "meta": meta, "buffers": buffers or [], **extra}
    ).encode()


# ---- 1. the pairing listener ---------------------------------------------------------------------


def test_the_pairing_listener_refuses_garbage_and_still_pairs(
    coordinator: KeyStore, tmp_path: Path
) -> None:
    """Bytes that are not ZMTP, oversized and stalled frames, and ZeroMQ messages that are
    malformed or out of order are refused without counting as guesses of the code; then one
    wrong code counts (max_failures=2: it is the only one) and the right code pairs."""
    server = PairingServer(coordinator, "home", "tcp://127.0.0.1:0", max_failures=2)
    endpoint = server.endpoints[0]
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["paired"] = server.serve(30)
        except PairingError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()

    # Raw TCP: not ZMTP at all, frames past the 16 KiB limit, and stalled mid-frame.
    noise = connect(endpoint)
    noise.sendall(bytes(range(256)) * 4)  # ZMTP/1.0 framing with an impossible length
    oversized = _null_session(endpoint)
    oversized.sendall(b"\x02" + (1 << 40).to_bytes(8, "big"))  # a 1 TiB frame announced
    big = _null_session(endpoint)
    big.sendall(b"\x02" + (20 << 10).to_bytes(8, "big") + b"x" * (20 << 10))
    stalled = _null_session(endpoint)
    stalled.sendall(b"\x00\xc8" + b"x" * 10)  # 10 of 200 bytes, then nothing
    stalled_at = time.monotonic()
    http = connect(endpoint)  # libzmq takes this for ZMTP/1.0 and waits for the rest
    http.sendall(b"GET / HTTP/1.1\r\nHost: coordinator\r\n\r\n")
    for sock in (noise, oversized, big):
        assert _dropped_within(sock, 2.0)

    # ZeroMQ messages that decode badly or make no sense in the handshake: an error each.
    dealer = client_socket(zmq.Context.instance(), None, None, FAST)
    dealer.connect(endpoint)
    hello = {"node_id": "n", "name": "w", "public": "k" * 40, "nonce": "ab" * 32}
    cases = {
        "not JSON": [b"\xff{not json"],
        "a worker's request": [_header("step", {"position": 0})],
        "extra header keys": [_header("pair_hello", hello, pickle=1)],
        "a buffer announced, none sent": [_header("pair_hello", hello, [["int64", [4]]])],
        "missing fields": [_header("pair_hello", {"node_id": "n"})],
        "a field too long": [_header("pair_hello", {**hello, "name": "w" * 300})],
        "not a Curve key": [_header("pair_hello", {**hello, "public": "not-a-key"})],
        "a proof without a hello": [_header("pair_proof", {"mac": "00" * 32})],
    }
    for name, frames in cases.items():
        reply = _answer(dealer, frames)
        assert reply.type == "error", name
    # A hello, then a proof that is not a MAC: refused, the session spent, no guess counted.
    assert _answer(dealer, [_header("pair_hello", hello)]).type == "pair_challenge"
    assert _answer(dealer, [_header("pair_proof", {"mac": 12})]).type == "error"
    dealer.close(0)
    assert server.failures == 0 and thread.is_alive()
    # The stalled frame is dropped by the heartbeat (2 s without a byte), not held.
    assert _dropped_within(stalled, max(0.1, 4.0 - (time.monotonic() - stalled_at)))

    worker = KeyStore(tmp_path / "w")
    with pytest.raises(PairingError, match="wrong pairing code"):
        join(worker, endpoint, "0000-0000" if server.code != "00000000" else "1111-1111")
    assert server.failures == 1
    paired = join(worker, endpoint, server.code)  # the HTTP peer still connected
    thread.join(10)
    node_id, keys = worker.node()
    assert result["paired"].peer.public == keys.public
    assert paired.peer.public == coordinator.cluster_keys("home").public
    assert set(coordinator.peers("home")) == {node_id}  # only the legitimate worker
    http.close()


# ---- 2. a worker: strangers, other clusters, garbage, a relay -----------------------------------


def test_strangers_and_another_clusters_coordinator_cannot_drive_a_worker(
    coordinator: KeyStore, start_worker: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    """A worker serving only cluster "home" refuses the keys of a cluster it is paired with
    too ("lab"), and a third process with its own keys (even a cluster it calls "home")."""
    worker = start_worker(coordinator, "--cluster", "home")
    lab = KeyStore(tmp_path / "lab")
    lab.init_cluster("lab")
    pair(lab, "lab", KeyStore(worker.config_dir))  # a pairing with another cluster, after start
    assert lab.cluster_keys("lab").public in KeyStore(worker.config_dir).allowed_keys("coordinator")
    with pytest.raises(AuthenticationError, match="refused"):
        WorkerClient(worker.endpoint, worker.public, lab.cluster_keys("lab"), FAST)

    stranger = subprocess.run(
        [sys.executable, "-c", STRANGER, worker.endpoint, worker.public, str(tmp_path / "s")],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert stranger.returncode == 0, stranger.stderr[-2000:]
    assert stranger.stdout.split() == ["AuthenticationError", "no-answer"], stranger.stdout

    with WorkerClient(
        worker.endpoint, worker.public, coordinator.cluster_keys("home"), FAST
    ) as link:
        assert link.info()["slice"] is None  # nothing the others sent was run
        link.load_slice(0, 2, 16, 1)
        assert link.step(np.array([PROMPT], np.int64), 0).shape == (1, len(PROMPT), 64)
    assert worker.proc.poll() is None


# A third machine: its own keys and a cluster of its own (named "home" too), never paired.
STRANGER = r"""
import sys
from pathlib import Path

import zmq
from edge.cluster.client import WorkerClient
from edge.cluster.errors import AuthenticationError
from edge.cluster.frames import Message, encode
from edge.cluster.keys import KeyStore
from edge.cluster.transport import LinkConfig, client_socket

endpoint, worker_public, root = sys.argv[1:]
store = KeyStore(Path(root))
keys = store.init_cluster("home")
config = LinkConfig(connect_timeout_s=3.0, request_timeout_s=3.0)
try:
    WorkerClient(endpoint, worker_public, keys, config)
    print("connected")
except AuthenticationError:
    print("AuthenticationError")
sock = client_socket(zmq.Context.instance(), keys, worker_public, config)
sock.setsockopt(zmq.IMMEDIATE, 0)  # queue the request anyway: it must never be answered
sock.connect(endpoint)
sock.send_multipart(encode(Message("load", 1, {"start": 0, "end": 1})))
print("answered" if sock.poll(1500) else "no-answer")
sock.close(0)
"""


def _greedy(link: WorkerClient, steps: int = 6) -> tuple[np.ndarray, list[int]]:
    """Prefill logits and greedy tokens through a worker holding the whole model."""
    link.reset()
    logits = link.step(np.array([PROMPT], np.int64), 0).copy()
    first, tokens = logits, []
    for _ in range(steps):
        tokens.append(int(logits[0, -1].argmax()))
        logits = link.step(np.array([[tokens[-1]]], np.int64), len(PROMPT) + len(tokens) - 1)
    return first, tokens


def test_a_session_survives_garbage_a_tampering_relay_and_a_replay(
    coordinator: KeyStore, start_worker: Callable[..., WorkerProcess], tiny_package: Path
) -> None:
    """While a coordinator decodes, raw connections send the worker garbage (not ZMTP, the
    wrong mechanism, a forged CURVE hello), each dropped at once, and one stalls in its
    greeting: the session's logits and tokens are exactly those before. A relay sees only
    ciphertext; a bit it flips drops that connection without running the request; its
    recording, replayed, runs nothing."""
    worker = start_worker(coordinator)
    keys = coordinator.cluster_keys("home")

    # A session recorded by a relay: what it did, in the clear, is not in what crossed it.
    recorder = Relay(worker.endpoint)
    with WorkerClient(recorder.endpoint, worker.public, keys, FAST) as link:
        link.load_slice(0, 2, 16, 1)
        link.request("ping", {"note": MARKER})
    recorder.join()
    wire = b"".join(recorder.sent) + bytes(recorder.received)
    for plain in (MARKER.encode(), b'"type"', b'"load"'):
        assert plain not in wire

    parts = len(open_package(tiny_package).manifest.parts)  # all: a step returns logits
    link = WorkerClient(worker.endpoint, worker.public, keys, FAST)
    link.load_slice(0, parts, 32, 1)
    expected = _greedy(link)

    stop = threading.Event()
    dropped: list[bool] = []
    garbage = [
        bytes(range(256)) * 2,
        b"GET / HTTP/1.1\r\n\r\n",  # ZMTP/1.0 to a CURVE server: refused
        _greeting(b"NULL") + READY,  # the wrong mechanism
        _greeting(b"CURVE") + _command(b"\x05HELLO" + os.urandom(194)),  # a forged hello
    ]

    def attack() -> None:
        while not stop.is_set():
            for data in garbage:
                sock = connect(worker.endpoint)
                try:
                    sock.sendall(data[:64])
                    sock.sendall(data[64:])
                except OSError:  # refused before the rest was read
                    dropped.append(True)
                else:
                    dropped.append(_dropped_within(sock, 2.0))
                sock.close()
                time.sleep(0.02)  # a flood, not a busy loop on the cores the worker needs

    stalled = connect(worker.endpoint)
    stalled.sendall(_greeting(b"CURVE")[:5])  # never finished (libzmq drops it after 5 s)
    attacker = threading.Thread(target=attack)
    attacker.start()
    try:
        for _ in range(3):
            first, tokens = _greedy(link)
            np.testing.assert_array_equal(first, expected[0])
            assert tokens == expected[1]
    finally:
        stop.set()
        attacker.join(10)
    assert len(dropped) >= len(garbage) and all(dropped), dropped

    # Tampering: one flipped bit after the handshake and the worker drops that connection.
    relay = Relay(worker.endpoint)
    tampered = WorkerClient(relay.endpoint, worker.public, keys, FAST)
    relay.tamper.set()
    with pytest.raises(PeerLostError):
        tampered.load_slice(0, 1, 16, 1)
    tampered.close()
    relay.join()

    # The recording replayed over raw TCP: a fresh server cookie makes its INITIATE worthless.
    replay = connect(worker.endpoint)
    for chunk in recorder.sent:
        try:
            replay.sendall(chunk)
        except OSError:
            break
        time.sleep(0.02)
    assert _dropped_within(replay, 2.0)

    info = link.info()  # neither ran "load": the whole model is still held, at its position
    assert info["slice"]["start"] == 0 and info["slice"]["end"] == parts
    assert info["slice"]["position"] == len(PROMPT) + 6  # _greedy's six steps
    first, tokens = _greedy(link)
    np.testing.assert_array_equal(first, expected[0])
    assert tokens == expected[1]
    link.close()
    stalled.close()
    assert worker.proc.poll() is None


# ---- 3. a worker without torch -------------------------------------------------------------------

# `edge cluster serve` in an interpreter where torch, transformers and onnx cannot import (a
# board's Python); at exit it reports what tried to import them and whether any loaded.
WITHOUT_TORCH = (
    BLOCK_EXPORT_STACK
    + r"""
import atexit, runpy


def report():
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print("BLOCKED " + json.dumps({"attempts": sorted(set(attempts)), "loaded": loaded}),
          file=sys.stderr, flush=True)


atexit.register(report)
sys.argv = ["edge", *sys.argv[1:]]
runpy.run_module("edge.cli.main", run_name="__main__", alter_sys=True)
"""
)


def _engine_tokens(package: Path, placement: Any, steps: int = 8) -> list[int]:
    from edge.engine import Engine, EngineConfig

    engine = Engine(
        open_package(package), EngineConfig(threads=1, max_context=64, placement=placement)
    )
    try:
        assert not engine.fallbacks, engine.fallbacks
        logits = engine.prefill(PROMPT)[0]
        tokens = []
        for _ in range(steps):
            tokens.append(int(logits.argmax()))
            logits = engine.decode(tokens[-1])
        return tokens
    finally:
        engine.close()


def test_a_worker_without_torch_serves_a_slice_and_a_share(
    coordinator: KeyStore, tiny_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.placement import Placement

    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    config_dir = tmp_path / "board"
    store = KeyStore(config_dir)
    _, keys = store.node()
    pair(coordinator, "home", store)
    env = {
        **os.environ,
        "EDGE_CONFIG_DIR": str(config_dir),
        "PYTHONPATH": str(REPO),
        "PYTHONNOUSERSITE": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", WITHOUT_TORCH, "cluster", "serve", str(tiny_package),
         "--listen", "127.0.0.1:0", "--no-advertise", "--no-profile", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("serving"), line + (proc.stderr.read() if proc.stderr else "")
        endpoint = line.split()[-1]
        with WorkerClient(endpoint, keys.public, coordinator.cluster_keys("home"), FAST) as link:
            assert link.info()["runtimes"] == ["ort_cpu", "tensor"]  # both imported without torch

        expected = _engine_tokens(tiny_package, None)
        count = len(open_package(tiny_package).manifest.parts)
        pipeline = Placement.split(
            count,
            [
                (0, "ort_cpu"),
                (
                    1,
                    "cluster",
                    {"endpoint": endpoint, "server_key": keys.public, "cluster": "home"},
                ),
                (count - 1, "ort_cpu"),
            ],
        )
        assert _engine_tokens(tiny_package, pipeline) == expected
        tensor = Placement.split(
            count,
            [
                (0, "ort_cpu"),
                (1, "tensor", {"cluster": "home", "workers": f"{endpoint}|{keys.public}",
                               "threads": 1}),
                (count - 1, "ort_cpu"),
            ],
        )  # fmt: skip
        assert _engine_tokens(tiny_package, tensor) == expected
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    report = json.loads(next(ln for ln in err.splitlines() if ln.startswith("BLOCKED "))[8:])
    assert report["loaded"] == [], report
    print("imports refused in the worker:", report["attempts"])
