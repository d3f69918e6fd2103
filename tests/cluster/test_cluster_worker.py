"""A worker process on loopback: only paired coordinators get in; malformed, truncated and
oversized messages are refused with an error (or a dropped connection) while it keeps
serving."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zmq

from edge.cluster.client import WorkerClient
from edge.cluster.errors import AuthenticationError, PeerLostError, RemoteError
from edge.cluster.frames import Message, decode, encode
from edge.cluster.keys import KeyStore, new_keypair
from edge.cluster.transport import LinkConfig, client_socket

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
# Bounded everywhere: a failure here is an error in seconds, never a hang.
FAST = LinkConfig(connect_timeout_s=3.0, request_timeout_s=30.0)


def _raw(coordinator: KeyStore, worker) -> zmq.Socket:
    """A paired DEALER speaking raw frames (to send what no client would)."""
    sock = client_socket(
        zmq.Context.instance(), coordinator.cluster_keys("home"), worker.public, FAST
    )
    sock.connect(worker.endpoint)
    return sock


def _answer(sock: zmq.Socket, frames: list) -> Message:
    sock.send_multipart(frames)
    assert sock.poll(5000), "the worker did not answer"
    return decode(sock.recv_multipart(), max_bytes=1 << 30)


def test_paired_coordinator_pings_and_reads_info(tiny_package, coordinator, start_worker):
    worker = start_worker(coordinator)
    with WorkerClient(
        worker.endpoint, worker.public, coordinator.cluster_keys("home"), FAST
    ) as link:
        assert link.ping() < 1.0
        info = link.info()
    assert info["node_id"] == worker.node_id and info["slice"] is None
    assert info["parts"] == 6 and info["memory_budget"] > 0


def test_unknown_keys_cannot_connect(coordinator, start_worker, tmp_path) -> None:
    """An unpaired coordinator key is refused by the worker's ZAP handler; a coordinator
    told the wrong worker key refuses the impostor; plaintext gets nothing."""
    worker = start_worker(coordinator)
    with pytest.raises(AuthenticationError, match="refused"):
        WorkerClient(worker.endpoint, worker.public, new_keypair(), FAST)
    with pytest.raises(AuthenticationError):
        WorkerClient(worker.endpoint, new_keypair().public, coordinator.cluster_keys("home"), FAST)
    plain = client_socket(zmq.Context.instance(), None, None, FAST)
    plain.setsockopt(zmq.IMMEDIATE, 0)
    plain.connect(worker.endpoint)
    plain.send_multipart(encode(Message("info", 1)))
    assert not plain.poll(1500), "a plaintext peer got an answer"
    plain.close(0)
    # The paired coordinator still gets in.
    with WorkerClient(
        worker.endpoint, worker.public, coordinator.cluster_keys("home"), FAST
    ) as link:
        link.ping()


def test_unpaired_worker_refuses_to_start(tiny_package, tmp_path) -> None:
    env = {**os.environ, "EDGE_CONFIG_DIR": str(tmp_path / "fresh"), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "edge.cli.main", "cluster", "serve", str(tiny_package),
         "--listen", "127.0.0.1:0", "--no-advertise", "--no-profile"],
        capture_output=True, text=True, env=env, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "paired with no coordinator" in proc.stderr


def test_bad_messages_get_errors_and_the_worker_keeps_serving(
    coordinator, start_worker, tiny_package
) -> None:
    worker = start_worker(coordinator)
    sock = _raw(coordinator, worker)
    header = {"v": 1, "type": "step", "id": 5, "meta": {"position": 0}}

    def frames(buffers: list, *data: bytes) -> list:
        return [json.dumps({**header, "buffers": buffers}).encode(), *data]

    cases = {
        "not JSON": [b"\xff{not json"],
        "unknown type": [json.dumps({**header, "type": "exec", "buffers": []}).encode()],
        "extra header keys": [json.dumps({**header, "buffers": [], "pickle": 1}).encode()],
        "dtype": frames([["object", [1]]], b"\0" * 8),
        "truncated buffer": frames([["int64", [1, 4]]], b"\0" * 31),
        "missing frame": frames([["int64", [1, 4]], ["int64", [1]]], b"\0" * 32),
        "huge shape": frames([["float32", [1, 2**30, 64]]], b"\0" * 64),
        "deep meta": [
            (
                '{"v":1,"type":"ping","id":1,"meta":{"a":' + "[" * 5000 + "]" * 5000
                + '},"buffers":[]}'
            ).encode()
        ],
        "no slice loaded": frames([["int64", [1, 2]]], np.array([[1, 2]]).tobytes()),
    }  # fmt: skip
    for name, message in cases.items():
        reply = _answer(sock, message)
        assert reply.type == "error", name
        assert reply.meta["kind"] in ("ProtocolError", "ConfigError"), (name, reply.meta)
        assert _answer(sock, encode(Message("ping", 9))).type == "ping", name

    # Requests that parse but make no sense for the slice are refused the same way.
    link = WorkerClient(worker.endpoint, worker.public, coordinator.cluster_keys("home"), FAST)
    link.load_slice(0, 3, 32, 1)
    for inputs, position, match in [
        (np.zeros((1, 2, 64), np.float32), 0, "takes int64"),  # hidden into the embedding
        (np.array([[1, 2]], np.int64), 5, "skip ahead"),
        (np.array([[1, 999999]], np.int64), 0, "vocabulary"),
        (np.ones((1, 40), np.int64), 0, "takes 1 to 32"),
    ]:
        with pytest.raises(RemoteError, match=match):
            link.step(inputs, position)
    assert link.step(np.array([[1, 2, 3]], np.int64), 0).shape == (1, 3, 64)

    # Past ZMQ_MAXMSGSIZE (32 MiB on a worker) the connection is dropped unread ...
    big = np.zeros((1, 1, 9 << 20), np.float32)  # 36 MiB
    with pytest.raises(PeerLostError):
        link.request("step", {"position": 3}, (big,), timeout_s=10)
    link.close()
    # ... and the worker serves the next connection.
    with WorkerClient(
        worker.endpoint, worker.public, coordinator.cluster_keys("home"), FAST
    ) as again:
        assert again.info()["slice"]["position"] == 3
    assert worker.proc.poll() is None
    sock.close(0)
