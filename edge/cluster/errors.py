"""Typed errors of the home cluster (all `EdgeError`s, so the CLI prints them as one line)."""

from __future__ import annotations

from edge.errors import ConfigError, EdgeError


class ClusterError(EdgeError, RuntimeError):
    """Something went wrong between the devices of a cluster."""


class ClusterUnavailableError(ConfigError):
    """The cluster needs pyzmq and zeroconf: `pip install "edge[cluster]"`."""


class PeerLostError(ClusterError):
    """A peer stopped answering (killed, paused, cut off) or its connection dropped; raised
    within the link's bounded detection time, naming the peer."""

    def __init__(self, message: str, peer: str = "") -> None:
        super().__init__(message)
        self.peer = peer

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.peer))


class AuthenticationError(ClusterError):
    """A peer refused our key, or presented one that is not paired with this cluster."""


class PairingError(ClusterError):
    """Pairing failed: wrong or expired code, a replayed or malformed handshake, no keys."""


class ProtocolError(ClusterError, ValueError):
    """A message is malformed, truncated, oversized or of an unexpected type."""


class RemoteError(ClusterError):
    """A worker answered a request with an error; `kind` is the error class it raised there."""

    def __init__(self, message: str, kind: str = "", peer: str = "") -> None:
        super().__init__(message)
        self.kind, self.peer = kind, peer

    def __reduce__(self) -> tuple:
        return (type(self), (str(self), self.kind, self.peer))


def require_zmq() -> None:
    """Raise `ClusterUnavailableError` with the install line when pyzmq is missing."""
    try:
        import zmq
    except ImportError as exc:
        raise ClusterUnavailableError(
            'the home cluster needs pyzmq and zeroconf: pip install "edge[cluster]"'
        ) from exc
    if not zmq.has("curve"):
        raise ClusterUnavailableError(
            f"this libzmq {zmq.zmq_version()} was built without CURVE security; "
            'reinstall pyzmq from its wheel: pip install --force-reinstall "edge[cluster]"'
        )
