"""A worker that lacks the package receives it from the coordinator in verified, resumable
chunks: every malformed, oversized, out-of-place or corrupted chunk is refused, a transfer cut
off by a killed worker resumes from the bytes it has, a file corrupted on the worker's disk is
sent again, and the package is used only after `open_package` verified it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge.cluster.client import WorkerClient
from edge.cluster.errors import PeerLostError, ProtocolError, RemoteError
from edge.cluster.frames import Message
from edge.cluster.keys import KeyStore
from edge.cluster.transfer import (
    PackageReceiver,
    TransferLimits,
    from_wire,
    send_package,
    to_wire,
)
from edge.engine import Engine, EngineConfig
from edge.errors import EdgeError
from edge.package import open_package
from edge.placement import Placement
from tests.cluster.conftest import REPO, pair

pytestmark = pytest.mark.timeout(120)
PROMPT = [1, 17, 42, 99, 5, 230, 64, 12]


class LocalLink:
    """`WorkerClient.request` straight into a receiver (the wire format's checks apart)."""

    def __init__(self, receiver: PackageReceiver) -> None:
        self.receiver, self.sent = receiver, 0

    def request(
        self, kind: str, meta: Mapping[str, Any] | None = None, buffers: Sequence[Any] = ()
    ) -> Message:
        if kind == "package_chunk":
            self.sent += int((meta or {})["length"])
        try:
            return self.receiver.handle(Message(kind, 1, dict(meta or {}), tuple(buffers)))
        except EdgeError as exc:
            raise RemoteError(str(exc), type(exc).__name__) from exc


def _offer(package: Path) -> Message:
    raw = (package / "manifest.json").read_bytes()
    meta = {"package_id": hashlib.sha256(raw).hexdigest(), "length": len(raw)}
    return Message("package_offer", 1, meta, (to_wire(raw),))


def _chunk(path: str, offset: int, data: bytes, **override: Any) -> Message:
    meta = {
        "path": path,
        "offset": offset,
        "length": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        **override,
    }
    return Message("package_chunk", 2, meta, (to_wire(data),))


def test_bytes_survive_the_int32_wire_and_padding_is_checked() -> None:
    for data in (b"", b"a", b"abcd", b"\x00\xff\x10" * 7):
        assert from_wire(to_wire(data), len(data), 1 << 20) == data
    with pytest.raises(ProtocolError):
        from_wire(to_wire(b"abcdefgh"), 3, 1 << 20)  # 5 bytes of padding
    with pytest.raises(ProtocolError):
        from_wire(to_wire(b"abcd"), 4, 2)  # over the limit
    with pytest.raises(ProtocolError):
        from_wire(to_wire(b"abcd"), True, 1 << 20)


def test_receiver_refuses_what_does_not_fit_the_offer(tiny_package: Path, tmp_path: Path) -> None:
    receiver = PackageReceiver(tmp_path / "pkg", TransferLimits(max_chunk_bytes=4096))
    with pytest.raises(ProtocolError, match="before package_offer"):
        receiver.handle(_chunk("embed.bin", 0, b"x"))
    offer = _offer(tiny_package)
    forged = Message("package_offer", 1, {**offer.meta, "package_id": "0" * 64}, offer.buffers)
    with pytest.raises(ProtocolError, match="hash"):
        receiver.handle(forged)
    assert receiver.handle(offer).meta["have"] == {}

    data = (tiny_package / "embed.bin").read_bytes()
    refused = [
        _chunk("../outside", 0, b"x"),  # not a file of the offer
        _chunk("manifest.json", 0, b"x"),
        _chunk("embed.bin", 4, data[4:8]),  # a hole
        _chunk("embed.bin", 0, data[:8], sha256="0" * 64),  # corrupted in transit
        _chunk("embed.bin", 0, data[:8192]),  # over the chunk limit
        _chunk("embed.bin", 0, data[:8], length=9),  # length and buffer disagree
        _chunk("embed.bin", -1, data[:8]),
    ]
    for message in refused:
        with pytest.raises(ProtocolError):
            receiver.handle(message)
    assert receiver.handle(_chunk("embed.bin", 0, data[:4096])).meta["size"] == 4096
    with pytest.raises(ProtocolError, match="offset"):  # the same chunk again: a rewrite
        receiver.handle(_chunk("embed.bin", 0, data[:4096]))
    small = next(f for f in open_package(tiny_package).manifest.files if f.size < 4096)
    body = (tiny_package / small.path).read_bytes()
    with pytest.raises(ProtocolError, match="exceed"):
        receiver.handle(_chunk(small.path, 0, body + b"extra"))
    assert not (tmp_path / "pkg").exists()


def test_resume_corruption_and_verification(tiny_package: Path, tmp_path: Path) -> None:
    """Half sent, a new receiver (a restarted worker) resumes from there; a file corrupted on
    the worker's disk is found at commit and sent again; a tampered manifest never lands."""
    dest = tmp_path / "models" / "pkg"
    first = LocalLink(PackageReceiver(dest))
    manifest = open_package(tiny_package).manifest
    total = sum(f.size for f in manifest.files)

    def stop_halfway(path: str, done: int, size: int) -> None:
        if first.sent > total // 2:
            raise KeyboardInterrupt  # the link is cut here

    with pytest.raises(KeyboardInterrupt):
        send_package(first, tiny_package, chunk_bytes=32 << 10, progress=stop_halfway)
    assert not dest.exists()

    receiver = PackageReceiver(dest)
    second = LocalLink(receiver)
    have = receiver.handle(_offer(tiny_package)).meta["have"]
    assert 0 < sum(have.values()) < total
    victim = next(p for p, n in have.items() if n > 0)
    partial = receiver.partial(receiver.package_id or "")
    with open(partial / victim, "r+b") as f:  # a bit flips on the worker's disk
        f.write(b"\xff\xfe")
    reply = send_package(second, tiny_package, chunk_bytes=32 << 10)
    assert reply == {"ok": True, "package": str(dest.absolute())}
    assert second.sent < total + next(f.size for f in manifest.files if f.path == victim) + 1
    assert not partial.exists()
    received = open_package(dest, verify="full")
    assert received.manifest == manifest
    received.close()
    with pytest.raises(RemoteError, match="already in place"):
        send_package(second, tiny_package)


def test_a_package_that_fails_open_package_is_not_put_in_place(
    tiny_package: Path, tmp_path: Path
) -> None:
    """A graph that reads a file outside the package, listed with its true sha256: the
    manifest checks and every hash pass, `open_package` does not, and nothing lands."""
    onnx = pytest.importorskip("onnx")
    bad = tmp_path / "bad"
    bad.mkdir()
    for item in tiny_package.iterdir():
        if item.is_file():
            (bad / item.name).write_bytes(item.read_bytes())
    graph = onnx.load(str(bad / "block.0.onnx"), load_external_data=False)
    tensor = next(t for t in graph.graph.initializer if t.external_data)
    next(e for e in tensor.external_data if e.key == "location").value = "../../etc/passwd"
    body = graph.SerializeToString()
    (bad / "block.0.onnx").write_bytes(body)
    data = json.loads((bad / "manifest.json").read_text())
    entry = next(f for f in data["files"] if f["path"] == "block.0.onnx")
    entry.update(size=len(body), sha256=hashlib.sha256(body).hexdigest())
    (bad / "manifest.json").write_text(json.dumps(data))

    receiver = PackageReceiver(tmp_path / "dest")
    link = LocalLink(receiver)
    receiver.handle(_offer(bad))  # a consistent manifest: accepted
    for name in receiver.files:
        chunk = (bad / name).read_bytes()
        link.request("package_chunk", _chunk(name, 0, chunk).meta, (to_wire(chunk),))
    folder = receiver.partial(receiver.package_id or "")
    with pytest.raises(RemoteError, match="external data"):
        link.request("package_commit", {"package_id": receiver.package_id})
    assert not (tmp_path / "dest").exists() and not folder.exists()


def _spawn(config_dir: Path, package: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "EDGE_CONFIG_DIR": str(config_dir), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "edge.cli.main", "cluster", "serve", str(package)),
            *("--receive", "--listen", "127.0.0.1:0", "--no-advertise", "--no-profile"),
            *("--threads", "1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("receiving"):
        proc.kill()
        raise AssertionError(f"worker did not start: {line}{proc.stderr.read()}")
    return proc, line.split()[-1]


def test_worker_without_the_package_receives_it_and_serves(
    tiny_package: Path, coordinator: KeyStore, tmp_path: Path, monkeypatch
) -> None:
    """`edge cluster serve PKG --receive` with PKG missing: killed mid-transfer, restarted,
    it resumes; once verified it serves the package, and the engine's tokens over it are the
    single-device ones."""
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    config_dir = tmp_path / "worker"
    store = KeyStore(config_dir)
    public = store.node()[1].public
    pair(coordinator, "home", store)
    dest = tmp_path / "models" / "pkg"
    keys = coordinator.cluster_keys("home")
    chunk = 32 << 10
    chunks = sum(-(-f.size // chunk) for f in open_package(tiny_package).manifest.files)

    procs = []
    try:
        proc, endpoint = _spawn(config_dir, dest)
        procs.append(proc)
        sent = [0]

        def kill_halfway(path: str, done: int, size: int) -> None:
            sent[0] += 1
            if sent[0] == 20:
                proc.kill()
                # Stop sending here: a send racing libzmq's view of the dropped connection
                # can block (a DEALER with no peer); the loss itself is test_cluster_link_loss's.
                raise PeerLostError("killed mid-transfer")

        with WorkerClient(endpoint, public, keys) as link:
            assert link.info()["package_id"] is None
            with pytest.raises(PeerLostError):
                send_package(link, tiny_package, chunk_bytes=chunk, progress=kill_halfway)
        proc.wait(10)
        assert not dest.exists()

        proc, endpoint = _spawn(config_dir, dest)
        procs.append(proc)
        resent = []
        with WorkerClient(endpoint, public, keys) as link:
            reply = send_package(
                link, tiny_package, chunk_bytes=chunk, progress=lambda *a: resent.append(a)
            )
        assert reply["ok"] is True
        assert len(resent) <= chunks - 19, (len(resent), chunks)  # resumed, not restarted
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("serving"), line
        endpoint = line.split()[-1]

        remote = {"endpoint": endpoint, "server_key": public, "cluster": "home"}
        placement = Placement.split(6, [(0, "ort_cpu"), (3, "cluster", remote)])
        split = Engine(
            open_package(tiny_package),
            EngineConfig(threads=1, max_context=64, placement=placement),
        )
        single = Engine(open_package(tiny_package), EngineConfig(threads=1, max_context=64))
        try:
            assert not split.fallbacks, split.fallbacks
            a, b = split.prefill(PROMPT)[0], single.prefill(PROMPT)[0]
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
            tokens = [int(a.argmax())]
            for _ in range(5):
                tokens.append(int(split.decode(tokens[-1]).argmax()))
            expected = [int(b.argmax())]
            for _ in range(5):
                expected.append(int(single.decode(expected[-1]).argmax()))
            assert tokens == expected
        finally:
            split.close()
            single.close()
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


def test_send_cli(tiny_package: Path, coordinator: KeyStore, tmp_path: Path) -> None:
    """`edge cluster send PKG --peer HOST:PORT` fills a receiving worker; sent again, the
    worker (now serving it) already holds it."""
    config_dir = tmp_path / "worker"
    pair(coordinator, "home", KeyStore(config_dir))
    proc, endpoint = _spawn(config_dir, tmp_path / "models" / "pkg")
    env = {**os.environ, "EDGE_CONFIG_DIR": str(coordinator.root.parent), "PYTHONPATH": str(REPO)}
    peer = endpoint.removeprefix("tcp://")
    command = [sys.executable, "-m", "edge.cli.main", "cluster", "send", str(tiny_package)]
    try:
        sent = subprocess.run(
            [*command, "--peer", peer, "--chunk-mib", "0.25"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=REPO,
        )
        assert sent.returncode == 0, sent.stderr[-2000:]
        assert "sent" in sent.stdout and "block.000.bin" in sent.stdout
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("serving") and line.split()[-1] == endpoint, line
        again = subprocess.run(
            [*command, "--peer", peer],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            cwd=REPO,
        )
        assert again.returncode == 0 and "already holds" in again.stdout, again.stderr[-2000:]
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_coordinator_sends_the_package_to_a_worker_waiting_for_it(
    tiny_package: Path, coordinator: KeyStore, tmp_path: Path, monkeypatch
) -> None:
    """`edge run --cluster` / `edge.load(cluster=...)`: a paired worker serving `--receive`
    without the package is sent it while the coordinator looks for members, then holds its
    share (tensor parallel here) and the tokens are the single device's."""
    from edge.cluster.placement import ClusterConfig, cluster_placement

    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    config_dir = tmp_path / "worker"
    pair(coordinator, "home", KeyStore(config_dir))
    dest = tmp_path / "models" / "pkg"
    proc, endpoint = _spawn(config_dir, dest)
    try:
        package = open_package(tiny_package)
        config = ClusterConfig(
            "home",
            (endpoint.removeprefix("tcp://"),),
            mdns_s=0,
            distribute="always",
            mode="tensor",
            progress=False,
        )
        placement, why = cluster_placement(package, config)
        assert placement is not None, why
        assert (dest / "manifest.json").is_file()
        split = Engine(package, EngineConfig(threads=1, max_context=64, placement=placement))
        single = Engine(open_package(tiny_package), EngineConfig(threads=1, max_context=64))
        try:
            assert not split.fallbacks, split.fallbacks
            np.testing.assert_allclose(
                split.prefill(PROMPT)[0], single.prefill(PROMPT)[0], rtol=1e-4, atol=1e-4
            )
        finally:
            split.close()
            single.close()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)
