"""`edge cluster provision` over a serial line: a pseudo-terminal pair stands in for the USB
cable (socat's `pty,raw pty,raw`, emulated by a relay thread between two pty masters). The
board pairs over the network with the real handshake and reports its capabilities; malformed,
oversized and foreign lines are refused on both sides, and the board then still joins."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("serial")

from edge.cluster.client import WorkerClient
from edge.cluster.errors import ProtocolError
from edge.cluster.keys import KeyStore
from edge.cluster.pairing import PairingServer, join
from edge.cluster.provision import (
    MAX_LINE_BYTES,
    LineChannel,
    ProvisionConfig,
    ProvisionError,
    open_serial,
    parse_line,
    provision,
)

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "edge.cli.main", "cluster")


def _pty() -> tuple[int, str, int]:
    """(master fd, slave path, slave fd held open), the slave in raw mode (no echo)."""
    master, slave = pty.openpty()
    tty.setraw(slave)
    return master, os.ttyname(slave), slave


class SerialCable:
    """Two ptys joined at their masters, like `socat pty,raw pty,raw`: what one end's slave
    writes, the other end's slave reads."""

    def __init__(self) -> None:
        self.a_master, self.a, self._a_slave = _pty()
        self.b_master, self.b, self._b_slave = _pty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        peer = {self.a_master: self.b_master, self.b_master: self.a_master}
        while not self._stop.is_set():
            ready, _, _ = select.select(list(peer), [], [], 0.05)
            for fd in ready:
                try:
                    data = os.read(fd, 4096)
                    os.write(peer[fd], data)
                except OSError:
                    continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for fd in (self.a_master, self.b_master, self._a_slave, self._b_slave):
            os.close(fd)


@pytest.fixture
def cable() -> Iterator[SerialCable]:
    link = SerialCable()
    yield link
    link.close()


def _env(config_dir: Path) -> dict[str, str]:
    return {**os.environ, "EDGE_CONFIG_DIR": str(config_dir), "PYTHONPATH": str(REPO)}


def _lines(fd: int, deadline: float) -> Iterator[dict[str, Any]]:
    """Messages written to a pty master until `deadline`."""
    buffer = b""
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            buffer += os.read(fd, 4096)
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield json.loads(line)


def _next(fd: int, kind: str, timeout: float = 20.0) -> dict[str, Any]:
    for message in _lines(fd, time.monotonic() + timeout):
        if message["type"] == kind:
            return message
    raise AssertionError(f"no {kind!r} line within {timeout} s")


def test_lines_are_refused_when_malformed_oversized_or_foreign() -> None:
    assert parse_line(b'{"v":1,"type":"ready","node_id":"n"}\r')["type"] == "ready"
    for bad in (
        b"login: ",
        b"\xff\xfe{}",
        b"[1, 2]",
        b'{"v": 2, "type": "ready"}',
        b'{"v": true, "type": "ready"}',
        b'{"v": 1, "type": "exec"}',
        b'{"v": 1, "type": "joined", "cores": NaN}',
        b"{" + b" " * MAX_LINE_BYTES + b"}",
    ):
        with pytest.raises(ProtocolError):
            parse_line(bad)


def test_provision_joins_a_board_that_then_serves(
    coordinator, cable, start_worker, tmp_path
) -> None:
    """Both CLIs as processes, one at each end of the cable: the board pairs, reports, and
    a worker started with its keys admits this coordinator."""
    board_dir = tmp_path / "worker0"  # what start_worker() uses next
    board = subprocess.Popen(
        [*CLI, "provisioned", cable.b, "--no-profile", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(board_dir),
        cwd=REPO,
    )
    try:
        host = subprocess.run(
            [*CLI, "provision", cable.a, "--listen", "127.0.0.1:0", "--address", "127.0.0.1"],
            capture_output=True,
            text=True,
            timeout=90,
            env=_env(coordinator.root.parent),
            cwd=REPO,
        )
        out, err = board.communicate(timeout=30)
    finally:
        if board.poll() is None:
            board.kill()
    assert host.returncode == 0, host.stderr[-2000:]
    assert board.returncode == 0, err[-2000:]
    node_id, _ = KeyStore(board_dir).node()
    assert f"provisioned {node_id}" in host.stdout and "cores" in host.stdout
    assert "joined cluster home" in out
    assert node_id in coordinator.peers("home")
    assert KeyStore(board_dir).allowed_keys("coordinator") == {
        coordinator.cluster_keys("home").public
    }

    worker = start_worker()  # its config folder is the board's: paired by provisioning
    assert worker.node_id == node_id
    keys = coordinator.cluster_keys("home")
    with WorkerClient(worker.endpoint, worker.public, keys, name=node_id) as link:
        link.load_slice(0, 2, 32, 1)
        assert link.step(np.array([[1, 2, 3]], np.int64), 0).shape[:2] == (1, 3)


def test_board_refuses_bad_lines_and_still_joins(coordinator, tmp_path) -> None:
    """The test plays the coordinator on the pty master: noise, broken JSON, an oversized
    line, a bad offer each get an error line (not final); then a real offer pairs."""
    master, slave_path, slave = _pty()
    board_dir = tmp_path / "board"
    board = subprocess.Popen(
        [*CLI, "provisioned", slave_path, "--no-profile", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(board_dir),
        cwd=REPO,
    )
    server = PairingServer(coordinator, "home", "tcp://127.0.0.1:0")
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(paired=server.serve(40)))
    try:
        ready = _next(master, "ready")
        bad = [
            b"U-Boot 2024.01 (console noise)\r\n",
            b'{"v": 1, "type": "offer", "cluster": "home"\n',  # truncated
            b'{"v": 1, "type": "offer", "cluster": "home", "pair": "x", "code": "1"}\n',
            b'{"v": 1, "type": "offer", "cluster": "../etc", "pair": "h:1", "code": "ABCDEFGH"}\n',
            b"{" + b"x" * (3 * MAX_LINE_BYTES) + b"}\n",  # oversized: refused once
        ]
        for line in bad:
            os.write(master, line)
        errors = []
        for message in _lines(master, time.monotonic() + 20):
            if message["type"] == "error":
                assert message.get("final") is not True, message
                errors.append(message["message"])
            if len(errors) == len(bad):
                break
        assert len(errors) == len(bad), errors
        assert any("over" in e for e in errors), errors
        assert board.poll() is None  # still waiting for a good offer

        thread.start()
        port = server.endpoints[0].rsplit(":", 1)[1]
        offer = {"v": 1, "type": "offer", "cluster": "home", "pair": f"127.0.0.1:{port}"}
        os.write(master, json.dumps({**offer, "code": server.code}).encode() + b"\n")
        joined = _next(master, "joined")
        assert board.wait(30) == 0, board.stderr.read() if board.stderr else ""
    finally:
        if board.poll() is None:
            board.kill()
        thread.join(45) if thread.is_alive() else None
        os.close(master)
        os.close(slave)
    assert joined["node_id"] == ready["node_id"] == result["paired"].peer.node_id
    assert joined["cores"] >= 1 and joined["memory_available"] > 0


def _board(master: int, store: KeyStore, node_id: str | None = None) -> dict[str, Any]:
    """A board in the test: noise first, then announce, pair with the offered code, and
    report `node_id` (default: its own)."""
    os.write(master, b"\x00\x01 garbage\n" + b"y" * (2 * MAX_LINE_BYTES) + b"\n")
    own, _ = store.node()
    ready = json.dumps({"v": 1, "type": "ready", "node_id": own}).encode() + b"\n"
    offer = None
    while offer is None:  # announce until the coordinator (which drops stale input) answers
        os.write(master, ready)
        offer = next(
            (m for m in _lines(master, time.monotonic() + 1) if m["type"] == "offer"), None
        )
    join(store, f"tcp://{offer['pair']}", offer["code"])
    joined = {
        "v": 1,
        "type": "joined",
        "node_id": node_id or own,
        "name": "board",
        "machine": "aarch64",
        "cores": 4,
        "memory_available": 1 << 30,
        "memory_budget": 1 << 29,
        "profile": {"fp32_gflops": 3.5},
    }
    os.write(master, b'{"v":1,"type":"joined","cores":"many"}\n')  # refused: ignored
    os.write(master, json.dumps(joined).encode() + b"\n")
    return offer


@pytest.mark.parametrize("lie", [False, True])
def test_coordinator_checks_the_board_that_paired(coordinator, tmp_path, lie: bool) -> None:
    """`provision` on a pty slave (pyserial), the board on the master: noise and oversized
    lines are skipped; a report from another node id than the one that paired is refused."""
    master, slave_path, slave = _pty()
    store = KeyStore(tmp_path / "board")
    result: dict[str, Any] = {}
    board = threading.Thread(
        target=lambda: result.update(offer=_board(master, store, "impostor" if lie else None))
    )
    port = open_serial(slave_path)
    options: dict[str, Any] = {
        "store": coordinator,
        "listen": "tcp://127.0.0.1:0",
        "address": "127.0.0.1",
        "config": ProvisionConfig(timeout_s=30, pair_timeout_s=20),
    }
    board.start()
    try:
        if lie:
            with pytest.raises(ProvisionError, match="impostor"):
                provision(port, "home", **options)
        else:
            done = provision(port, "home", **options)
            assert done.capabilities.node_id == store.node()[0]
            assert done.capabilities.cores == 4 and done.capabilities.profile["fp32_gflops"] == 3.5
    finally:
        board.join(30)
        port.close()
        os.close(master)
        os.close(slave)
    assert result["offer"]["cluster"] == "home"


def test_board_gives_up_without_an_offer(tmp_path, cable) -> None:
    start = time.monotonic()
    board = subprocess.run(
        [*CLI, "provisioned", cable.b, "--no-profile", "--timeout", "1.5"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(tmp_path / "board"),
        cwd=REPO,
    )
    assert board.returncode != 0 and "no offer" in board.stderr
    assert time.monotonic() - start < 30


def test_line_channel_resyncs_after_an_oversized_line(tmp_path) -> None:
    master, slave_path, slave = _pty()
    port = open_serial(slave_path)
    try:
        channel = LineChannel(port, 256)
        os.write(master, b"z" * 1000 + b"\n" + b'{"v":1,"type":"ready","node_id":"n"}\n')
        with pytest.raises(ProtocolError, match="over 256"):
            channel.receive(time.monotonic() + 5)
        assert channel.receive(time.monotonic() + 5) == {"v": 1, "type": "ready", "node_id": "n"}
        assert channel.receive(time.monotonic() + 0.2) is None
    finally:
        port.close()
        os.close(master)
        os.close(slave)
