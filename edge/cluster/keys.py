"""Keys and identities on disk: this node's id and Curve keypair, each cluster's keypair and
the public keys paired with it.

Layout under the config folder (`$EDGE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/edge`, else
`~/.config/edge`), every file 0600 and every folder 0700, written atomically:

    cluster/node.json                 {"node_id": ..., "public": ...} (stable across runs)
    cluster/node.secret               this node's Curve secret key (a worker's server key)
    cluster/clusters/NAME/cluster.json    {"name": ..., "public": ...}
    cluster/clusters/NAME/cluster.secret  the cluster's Curve secret (the coordinator's)
    cluster/clusters/NAME/peers.json      paired peers: node id -> public key, role, name

Keys are Z85 text as zmq prints them (40 characters for 32 bytes).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from edge.cluster.errors import ClusterError, PairingError
from edge.errors import ConfigError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
Z85_PATTERN = re.compile(r"^[0-9A-Za-z.\-:+=^!/*?&<>()\[\]{}@%$#]{40}$")
ROLES = ("worker", "coordinator")


@dataclass(frozen=True)
class CurveKeys:
    """A Curve25519 keypair, Z85-encoded (`secret` is None for a peer's public key only)."""

    public: str
    secret: str | None = None

    def __post_init__(self) -> None:
        for value in (self.public, self.secret):
            if value is not None and not Z85_PATTERN.match(value):
                raise ClusterError("a Curve key must be 40 characters of Z85")

    def __repr__(self) -> str:  # never print a secret
        return f"CurveKeys(public={self.public!r})"


def check_public_key(value: object) -> str:
    """`value` if it is a public key as a peer would send it (40 characters of Z85)."""
    if not isinstance(value, str):
        raise ClusterError("a Curve key must be 40 characters of Z85")
    return CurveKeys(value).public


@dataclass(frozen=True)
class Peer:
    """A paired device: its stable node id, its public key and what it is to us."""

    node_id: str
    public: str
    role: str
    name: str = ""


def config_dir() -> Path:
    """edge's config root (keys live here, not in the cache a user may wipe)."""
    explicit = os.environ.get("EDGE_CONFIG_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CONFIG_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".config") / "edge"


def new_keypair() -> CurveKeys:
    import zmq

    public, secret = zmq.curve_keypair()
    return CurveKeys(public.decode("ascii"), secret.decode("ascii"))


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ConfigError(
            f"cluster name {name!r:.80}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class KeyStore:
    """This machine's cluster keys and paired peers, under `root` (default: config_dir())."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (root or config_dir()) / "cluster"

    # ---- this node ----------------------------------------------------------------------------
    def node(self) -> tuple[str, CurveKeys]:
        """(node id, keypair), created on first use and stable afterwards."""
        info = self.root / "node.json"
        secret = self.root / "node.secret"
        if info.is_file() and secret.is_file():
            data = _read_json(info)
            keys = CurveKeys(str(data.get("public", "")), secret.read_text().strip())
            return str(data["node_id"]), keys
        keys = new_keypair()
        node_id = f"{_host_label()}-{secrets.token_hex(4)}"
        _write(secret, keys.secret or "")
        _write(info, json.dumps({"node_id": node_id, "public": keys.public}))
        return node_id, keys

    # ---- clusters -----------------------------------------------------------------------------
    def _cluster_dir(self, name: str) -> Path:
        return self.root / "clusters" / check_name(name)

    def init_cluster(self, name: str, *, replace: bool = False) -> CurveKeys:
        """Create cluster `name`'s keypair (the coordinator's); refuses to overwrite one."""
        folder = self._cluster_dir(name)
        if (folder / "cluster.secret").exists() and not replace:
            raise ConfigError(
                f"cluster {name!r} already has keys in {folder}; pass replace=True "
                "(--force) to make new ones, which unpairs every device"
            )
        keys = new_keypair()
        _write(folder / "cluster.secret", keys.secret or "")
        _write(folder / "cluster.json", json.dumps({"name": name, "public": keys.public}))
        _write(folder / "peers.json", "{}")
        return keys

    def cluster_keys(self, name: str) -> CurveKeys:
        folder = self._cluster_dir(name)
        try:
            data = _read_json(folder / "cluster.json")
            return CurveKeys(str(data["public"]), (folder / "cluster.secret").read_text().strip())
        except (OSError, KeyError, ClusterError) as exc:
            raise PairingError(
                f"no keys for cluster {name!r} on this machine ({folder}); "
                f"run `edge cluster init {name}` first"
            ) from exc

    def clusters(self) -> list[str]:
        folder = self.root / "clusters"
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    # ---- paired peers -------------------------------------------------------------------------
    def peers(self, name: str) -> dict[str, Peer]:
        path = self._cluster_dir(name) / "peers.json"
        if not path.is_file():
            return {}
        return {
            node: Peer(node, str(p["public"]), str(p["role"]), str(p.get("name", "")))
            for node, p in _read_json(path).items()
        }

    def add_peer(self, cluster: str, peer: Peer) -> None:
        if peer.role not in ROLES:
            raise ConfigError(f"peer role {peer.role!r}; one of {ROLES}")
        CurveKeys(peer.public)  # validates
        peers = self.peers(cluster)
        peers[peer.node_id] = peer
        data = {
            p.node_id: {"public": p.public, "role": p.role, "name": p.name} for p in peers.values()
        }
        _write(self._cluster_dir(cluster) / "peers.json", json.dumps(data, indent=1))

    def allowed_keys(self, role: str, clusters: list[str] | None = None) -> set[str]:
        """Public keys of the peers paired in `role` (e.g. the coordinators a worker obeys)."""
        return {
            p.public
            for name in (clusters if clusters is not None else self.clusters())
            for p in self.peers(name).values()
            if p.role == role
        }


def _host_label() -> str:
    label = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:24].strip("-")
    return label or "node"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClusterError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ClusterError(f"{path} must hold a JSON object")
    return data


def _write(path: Path, text: str) -> None:
    """Write `text` to `path` atomically with 0600 permissions (folders 0700 from the store's
    root, `cluster/`, down)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    for folder in path.parents:
        os.chmod(folder, 0o700)
        if folder.name == "cluster":
            break
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
