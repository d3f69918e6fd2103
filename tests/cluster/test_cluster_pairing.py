"""Pairing with a one-time code: keys exchanged and stored 0600; a wrong code, a replayed
handshake, a revoked code or a machine without keys cannot pair."""

from __future__ import annotations

import stat
import threading
from pathlib import Path
from typing import Any

import pytest

from edge.cluster.errors import PairingError
from edge.cluster.frames import Message
from edge.cluster.keys import KeyStore
from edge.cluster.pairing import (
    PairingClient,
    PairingServer,
    _mac,
    _transcript,
    derive_key,
    join,
    normalize_code,
)
from edge.cluster.transport import send

pytestmark = pytest.mark.timeout(60)


def _serve(server: PairingServer, timeout_s: float = 20) -> tuple[threading.Thread, dict]:
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["paired"] = server.serve(timeout_s)
        except PairingError as exc:
            result["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, result


def test_pairing_exchanges_keys_and_stores_them_private(coordinator: KeyStore, tmp_path) -> None:
    worker = KeyStore(tmp_path / "w")
    server = PairingServer(coordinator, "home", "tcp://127.0.0.1:0")
    thread, result = _serve(server)
    paired = join(worker, server.endpoints[0], server.code.lower())  # case is ignored
    thread.join(10)
    node_id, keys = worker.node()
    assert result["paired"].peer.public == keys.public
    assert coordinator.peers("home")[node_id].role == "worker"
    assert paired.peer.public == coordinator.cluster_keys("home").public
    assert worker.allowed_keys("coordinator") == {coordinator.cluster_keys("home").public}
    for root in (coordinator.root, worker.root):
        for path in Path(root).rglob("*"):
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))


def test_wrong_code_is_refused_and_revoked_after_five(coordinator: KeyStore, tmp_path) -> None:
    worker = KeyStore(tmp_path / "w")
    server = PairingServer(coordinator, "home", "tcp://127.0.0.1:0", code="7KQM3XWP")
    thread, result = _serve(server)
    for _ in range(5):
        with pytest.raises(PairingError, match="wrong pairing code"):
            join(worker, server.endpoints[0], "7KQM-3XWQ", timeout_s=3)
    thread.join(10)
    assert "revoked" in str(result["error"])
    assert coordinator.peers("home") == {} and worker.allowed_keys("coordinator") == set()


def test_replayed_handshake_is_refused(coordinator: KeyStore, tmp_path) -> None:
    """A recorded hello + proof, replayed against a session with the same code: the fresh
    salt and nonce make the recorded proof wrong."""
    worker = KeyStore(tmp_path / "w")
    node_id, keys = worker.node()
    code = "7KQM3XWP"
    hello = {"node_id": node_id, "name": "w", "public": keys.public, "nonce": "ab" * 32}

    server = PairingServer(coordinator, "home", "tcp://127.0.0.1:0", code=code)
    thread, result = _serve(server)
    client = PairingClient(server.endpoints[0], 5)
    challenge = client.exchange(Message("pair_hello", 1, hello), "pair_challenge").meta
    proof = {"mac": _mac(derive_key(code, bytes.fromhex(challenge["salt"])), "worker",
                         _transcript(hello, challenge))}  # fmt: skip
    client.exchange(Message("pair_proof", 2, proof), "pair_welcome")
    send(client._sock, Message("pair_done", 3))
    client.close()  # the recording: hello and proof
    thread.join(10)
    assert "paired" in result

    # The same code offered again (as if the coordinator reused it): the replay still fails.
    replay = PairingServer(coordinator, "home", "tcp://127.0.0.1:0", code=code, max_failures=1)
    thread, result = _serve(replay, 5)
    client = PairingClient(replay.endpoints[0], 5)
    client.exchange(Message("pair_hello", 1, hello), "pair_challenge")
    with pytest.raises(PairingError, match="replayed"):
        client.exchange(Message("pair_proof", 2, proof), "pair_welcome")
    client.close()
    thread.join(10)
    assert "revoked" in str(result["error"])


def test_a_machine_without_keys_cannot_offer_pairing(tmp_path) -> None:
    with pytest.raises(PairingError, match="edge cluster init"):
        PairingServer(KeyStore(tmp_path / "none"), "home", "tcp://127.0.0.1:0")


def test_codes_normalize() -> None:
    assert normalize_code("7kqm-3xwp") == "7KQM3XWP"
    assert normalize_code("oil0 1111") == "01101111"
    with pytest.raises(PairingError):
        normalize_code("7KQM-3XW")
