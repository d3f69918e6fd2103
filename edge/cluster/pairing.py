"""Pairing: a worker joins a cluster with a short one-time code shown by the coordinator.

Both sides learn the other's long-term Curve public key, authenticated by the code; from then
on only CurveZMQ links between paired keys are accepted. The code is 8 characters of
Crockford base32 (40 bits), valid for one pairing, a few minutes, and a few wrong guesses.

    worker -> coordinator   pair_hello      {node_id, name, public, nonce_w}
    coordinator -> worker   pair_challenge  {cluster, coordinator, public, salt, nonce_c}
    worker -> coordinator   pair_proof      {mac_w = HMAC(K, "worker" | transcript)}
    coordinator -> worker   pair_welcome    {mac_c = HMAC(K, "coordinator" | transcript)}
    worker -> coordinator   pair_done       {}

K = scrypt(code, salt) (n=2^15, r=8: ~0.1 s and 32 MiB per guess), with a fresh random salt
and nonce per session; the transcript is every field above, so a recorded proof is worthless in
another session (a replay), and a wrong code fails the MAC. The worker proves first, so a
stranger who connects learns nothing about the code and gets one guess per session; after
`max_failures` wrong proofs the code is revoked. Keys travel in the clear (they are public);
what the code protects is that they are the right ones.

Known limit, as for any code-based scheme without a PAKE: someone who records a pairing (or
poses as the coordinator to a joining worker) can test guesses of the code offline against the
MACs, at scrypt's cost per guess (2^40 codes: centuries of CPU time); pairing is rare and the
code single-use. A PAKE (SPAKE2) would remove that.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

from edge.cluster.errors import ClusterError, PairingError, ProtocolError, require_zmq
from edge.cluster.frames import Message
from edge.cluster.keys import CurveKeys, KeyStore, Peer, check_name
from edge.cluster.transport import LinkConfig, client_socket, receive, send, server_socket

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I, L, O, U
CODE_LENGTH = 8
SCRYPT = {"n": 2**15, "r": 8, "p": 1, "maxmem": 64 << 20, "dklen": 32}
MAX_BYTES = 16 << 10
SESSION_S = 20.0  # a session that does not finish in time is dropped
VERSION = "edge-pair-v1"


def new_code() -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))


def show_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


def normalize_code(text: str) -> str:
    """What a person typed -> the code: case, dashes and spaces ignored, O->0, I/L->1."""
    code = text.upper().replace("-", "").replace(" ", "")
    code = code.translate(str.maketrans("OIL", "011"))
    if len(code) != CODE_LENGTH or any(c not in ALPHABET for c in code):
        raise PairingError(f"a pairing code is {CODE_LENGTH} letters and digits, like 7KQM-3XWP")
    return code


def derive_key(code: str, salt: bytes) -> bytes:
    return hashlib.scrypt(normalize_code(code).encode(), salt=salt, **SCRYPT)


def _transcript(hello: dict, challenge: dict) -> bytes:
    fields = [
        VERSION,
        challenge["cluster"],
        challenge["coordinator"],
        challenge["public"],
        challenge["salt"],
        challenge["nonce"],
        hello["node_id"],
        hello["name"],
        hello["public"],
        hello["nonce"],
    ]
    return json.dumps(fields, separators=(",", ":")).encode()


def _mac(key: bytes, role: str, transcript: bytes) -> str:
    return hmac.new(key, role.encode() + b"|" + transcript, hashlib.sha256).hexdigest()


def _strings(meta: object, names: tuple[str, ...], limit: int = 256) -> dict:
    if not isinstance(meta, dict) or not all(
        isinstance(meta.get(n), str) and 0 < len(meta[n]) <= limit for n in names
    ):
        raise ProtocolError(f"a pairing message needs the string fields {names}")
    return {n: meta[n] for n in names}


@dataclass(frozen=True)
class Paired:
    """The result of a pairing, on either side."""

    cluster: str
    peer: Peer


class PairingServer:
    """The coordinator's side: listens on `endpoint` for one worker with the code.

    >>> server = PairingServer(KeyStore(), "home")  # doctest: +SKIP
    >>> print(show_code(server.code), server.endpoints)
    >>> paired = server.serve(timeout_s=300)
    """

    def __init__(
        self,
        store: KeyStore,
        cluster: str,
        endpoint: str = "tcp://0.0.0.0:5711",
        *,
        code: str | None = None,
        max_failures: int = 5,
    ) -> None:
        require_zmq()
        import zmq

        self.store, self.cluster = store, check_name(cluster)
        self.keys = store.cluster_keys(cluster)  # PairingError if `edge cluster init` not run
        self.node_id, _ = store.node()
        self.code = normalize_code(code) if code else new_code()
        self.max_failures, self.failures = max_failures, 0
        self._sessions: dict[bytes, tuple[float, dict, dict]] = {}
        self._sock, self.endpoints = server_socket(
            zmq.Context.instance(), None, LinkConfig(max_message_bytes=MAX_BYTES), [endpoint]
        )

    def serve(self, timeout_s: float = 300.0) -> Paired:
        """Answer pairing messages until one worker pairs (its Peer is stored) or the code
        expires or is revoked (`PairingError`)."""
        deadline = time.monotonic() + timeout_s
        try:
            while (left := deadline - time.monotonic()) > 0:
                if not self._sock.poll(max(1, int(min(left, 0.5) * 1000))):
                    continue
                paired = self._handle()
                if paired is not None:
                    self._await_done()
                    return paired
                if self.failures >= self.max_failures:
                    time.sleep(0.3)  # let the last refusal go out before the socket closes
                    raise PairingError(
                        f"{self.failures} wrong pairing attempts: the code is revoked; "
                        "run `edge cluster pair` again for a new one"
                    )
            raise PairingError(f"no worker paired within {timeout_s:g} s; the code expired")
        finally:
            self.close()

    def close(self) -> None:
        self._sock.close(0)

    def _await_done(self) -> None:
        """Wait (briefly) for the worker's "pair_done": closing at once could drop the
        welcome still queued for it."""
        deadline = time.monotonic() + 2.0
        while (left := deadline - time.monotonic()) > 0:
            if self._sock.poll(max(1, int(left * 1000))):
                try:
                    receive(self._sock, max_bytes=MAX_BYTES, types={"pair_done"}, routed=True)
                except ProtocolError:
                    continue
                return

    def _handle(self) -> Paired | None:
        now = time.monotonic()
        self._sessions = {k: v for k, v in self._sessions.items() if v[0] > now}
        try:
            identity, message = receive(
                self._sock, max_bytes=MAX_BYTES, types={"pair_hello", "pair_proof"}, routed=True
            )
        except ProtocolError as exc:
            identity = getattr(exc, "identity", None)
            if identity is not None:
                self._reply(
                    identity, Message("error", 0, {"kind": "ProtocolError", "message": str(exc)})
                )
            return None
        assert identity is not None
        try:
            if message.type == "pair_hello":
                self._challenge(identity, message)
                return None
            return self._verify(identity, message)
        except (ProtocolError, PairingError) as exc:
            self._reply(
                identity,
                Message("error", message.id, {"kind": type(exc).__name__, "message": str(exc)}),
            )
            return None

    def _challenge(self, identity: bytes, message: Message) -> None:
        hello = _strings(message.meta, ("node_id", "name", "public", "nonce"))
        try:
            CurveKeys(hello["public"])
        except ClusterError:  # refused like any malformed field: it must not end `serve`
            raise ProtocolError(
                "pair_hello: public is not a Curve key (40 Z85 characters)"
            ) from None
        challenge = {
            "cluster": self.cluster,
            "coordinator": self.node_id,
            "public": self.keys.public,
            "salt": secrets.token_hex(16),
            "nonce": secrets.token_hex(32),
        }
        # The key is derived when a proof comes, not here: a hello costs no scrypt, so a
        # stranger's hellos cannot keep this thread busy; each proof's scrypt counts toward
        # the code's failures when wrong.
        self._sessions[identity] = (time.monotonic() + SESSION_S, hello, challenge)
        self._reply(identity, Message("pair_challenge", message.id, challenge))

    def _verify(self, identity: bytes, message: Message) -> Paired | None:
        session = self._sessions.pop(identity, None)
        if session is None:
            raise PairingError("no pairing session in progress on this connection")
        _, hello, challenge = session
        proof = _strings(message.meta, ("mac",))["mac"]
        key = derive_key(self.code, bytes.fromhex(challenge["salt"]))
        transcript = _transcript(hello, challenge)
        if not hmac.compare_digest(proof, _mac(key, "worker", transcript)):
            self.failures += 1
            raise PairingError("wrong pairing code (or a replayed handshake)")
        peer = Peer(hello["node_id"], hello["public"], "worker", hello["name"])
        self.store.add_peer(self.cluster, peer)
        self._reply(
            identity,
            Message("pair_welcome", message.id, {"mac": _mac(key, "coordinator", transcript)}),
        )
        return Paired(self.cluster, peer)

    def _reply(self, identity: bytes, message: Message) -> None:
        send(self._sock, message, identity)


class PairingClient:
    """The worker's side, step by step (tests drive the steps to replay them)."""

    def __init__(self, endpoint: str, timeout_s: float = 10.0) -> None:
        require_zmq()
        import zmq

        self.timeout_s = timeout_s
        config = LinkConfig(max_message_bytes=MAX_BYTES, connect_timeout_s=timeout_s)
        self._sock = client_socket(zmq.Context.instance(), None, None, config)
        self._sock.connect(endpoint)
        self.endpoint = endpoint

    def exchange(self, message: Message, expect: str) -> Message:
        send(self._sock, message)
        if not self._sock.poll(int(self.timeout_s * 1000)):
            raise PairingError(f"no answer from a coordinator at {self.endpoint}")
        _, reply = receive(self._sock, max_bytes=MAX_BYTES, types={expect, "error"})
        if reply.type == "error":
            raise PairingError(f"pairing refused: {reply.meta.get('message', '')}")
        return reply

    def close(self) -> None:
        self._sock.close(linger=1000)  # let "pair_done" go out


def join(store: KeyStore, endpoint: str, code: str, timeout_s: float = 10.0) -> Paired:
    """Pair this machine (as a worker) with the coordinator at `endpoint` using `code`;
    stores the coordinator's key and returns it."""
    code = normalize_code(code)
    node_id, keys = store.node()
    import socket

    hello = {
        "node_id": node_id,
        "name": socket.gethostname()[:64] or node_id,
        "public": keys.public,
        "nonce": secrets.token_hex(32),
    }
    client = PairingClient(endpoint, timeout_s)
    try:
        reply = client.exchange(Message("pair_hello", 1, hello), "pair_challenge")
        challenge = _strings(reply.meta, ("cluster", "coordinator", "public", "salt", "nonce"))
        check_name(challenge["cluster"])
        CurveKeys(challenge["public"])
        try:
            salt = bytes.fromhex(challenge["salt"])
        except ValueError:
            raise ProtocolError("the challenge's salt is not hex") from None
        key = derive_key(code, salt)
        transcript = _transcript(hello, challenge)
        welcome = client.exchange(
            Message("pair_proof", 2, {"mac": _mac(key, "worker", transcript)}), "pair_welcome"
        )
        mac = _strings(welcome.meta, ("mac",))["mac"]
        if not hmac.compare_digest(mac, _mac(key, "coordinator", transcript)):
            raise PairingError("the coordinator does not know the code: not pairing with it")
        send(client._sock, Message("pair_done", 3))
    finally:
        client.close()
    peer = Peer(challenge["coordinator"], challenge["public"], "coordinator", challenge["cluster"])
    store.add_peer(challenge["cluster"], peer)
    return Paired(challenge["cluster"], peer)
