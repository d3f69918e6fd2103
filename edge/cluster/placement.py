"""The coordinator's split of a model over the paired workers it finds (pipeline parallel).

Parts are cut into contiguous ranges, one per device, sized by each device's available memory
(this machine first when it takes a share, then the workers in the order found; the head
stays on this machine, so only hidden states cross the network). A worker
must hold the same package (its manifest's sha256): a different one would compute garbage.

One request decodes one token at a time, so a pipeline computes on one device at a time and
adds a network hop per boundary: it lets a model run that fits no single device, and is never
faster than one device that holds it all. So by default (`distribute="auto"`) a model that fits
in this machine's available memory is not distributed, and the reason says so.

>>> config = ClusterConfig("home", peers=("192.168.1.20:5570",))
>>> placement, why = cluster_placement(package, config)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from edge.cluster.errors import ClusterError
from edge.errors import ConfigError
from edge.format import MANIFEST_FILE
from edge.package import Package
from edge.placement import DEFAULT_BACKEND, Placement, SegmentPlacement

DISTRIBUTE = ("auto", "always")
# Of the memory a device reports available, the share its slice may take: the runtime, the
# KV cache and the page cache need the rest.
MEMORY_SHARE = 0.7


@dataclass(frozen=True)
class ClusterConfig:
    """`name`: the cluster (keys from `edge cluster init`); `peers`: explicit HOST:PORT of
    workers, tried besides mDNS for `mdns_s` seconds; `distribute`: "auto" (only a model that
    does not fit here) or "always"; `local_share`: this machine computes a share too."""

    name: str
    peers: tuple[str, ...] = ()
    mdns_s: float = 2.0
    distribute: str = "auto"
    local_share: bool = True

    def __post_init__(self) -> None:
        if self.distribute not in DISTRIBUTE:
            raise ConfigError(f"distribute={self.distribute!r}; one of {DISTRIBUTE}")
        if self.mdns_s < 0:
            raise ConfigError(f"mdns_s={self.mdns_s}; must be >= 0")
        object.__setattr__(self, "peers", tuple(self.peers))


@dataclass(frozen=True)
class Member:
    """A paired worker that answered, holds this package, and has `memory` bytes to give."""

    node_id: str
    endpoint: str
    public: str
    memory: int


def package_id(package: Package) -> str:
    """What workers report of their package: the sha256 of its manifest file."""
    return hashlib.sha256(package.files.read(MANIFEST_FILE)).hexdigest()


def find_members(package: Package, config: ClusterConfig) -> tuple[list[Member], list[str]]:
    """Paired workers found (mDNS and `config.peers`) holding `package`; and why others were
    left out."""
    from edge.cluster.client import WorkerClient
    from edge.cluster.discovery import browse, parse_peers
    from edge.cluster.keys import KeyStore
    from edge.cluster.transport import LinkConfig, tcp_endpoint

    store = KeyStore()
    keys = store.cluster_keys(config.name)
    paired = {p.node_id: p for p in store.peers(config.name).values() if p.role == "worker"}
    found = parse_peers(config.peers) + (browse(config.mdns_s) if config.mdns_s else [])
    wanted, members, skipped = package_id(package), [], []
    link_config = LinkConfig(connect_timeout_s=2.0, request_timeout_s=10.0)
    for node in found:
        endpoint = tcp_endpoint(node.host, node.port)
        # mDNS names the node; an explicit peer is tried with every paired worker's key.
        candidates = [paired[node.node_id]] if node.node_id in paired else list(paired.values())
        for peer in candidates:
            if any(m.node_id == peer.node_id for m in members):
                continue
            try:
                with WorkerClient(endpoint, peer.public, keys, link_config, peer.name) as link:
                    info = link.info()
            except ClusterError as exc:
                skipped.append(f"{endpoint} ({peer.node_id}): {exc}")
                continue
            if info.get("package_id") != wanted:
                skipped.append(f"{endpoint} ({peer.node_id}) holds another package")
                break
            memory = int(info.get("memory_budget") or info.get("memory_available") or 0)
            members.append(Member(peer.node_id, endpoint, peer.public, memory))
            break
    return members, skipped


def split_by_memory(weights: Sequence[int], capacities: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges of parts, one per device in order, each holding a share
    of the bytes proportional to its capacity (every device at least one part)."""
    n, k = len(weights), len(capacities)
    if not 0 < k <= n:
        raise ConfigError(f"cannot split {n} parts over {k} devices")
    total, room = sum(weights), sum(capacities)
    bounds, done, target = [0], 0, 0.0
    for j in range(k - 1):
        target += total * capacities[j] / room
        end = bounds[-1] + 1  # at least one part each
        while end < n - (k - 1 - j) and done + weights[end - 1] + weights[end] / 2 <= target:
            done += weights[end - 1]
            end += 1
        done += weights[end - 1]
        bounds.append(end)
    bounds.append(n)
    return list(pairwise(bounds))


def cluster_placement(
    package: Package, config: ClusterConfig, members: Sequence[Member] | None = None
) -> tuple[Placement | None, str]:
    """(the placement over this machine and the workers, why) or (None, why not)."""
    from devices.memory_info import read_memory

    skipped: list[str] = []
    if members is None:
        members, skipped = find_members(package, config)
    why_skipped = f"; left out: {'; '.join(skipped)}" if skipped else ""
    if not members:
        return None, f"no paired worker of cluster {config.name!r} answered{why_skipped}"
    parts = package.manifest.parts
    weights = [sum(t.nbytes for t in p.tensors) for p in parts]
    here = int(read_memory().available * MEMORY_SHARE)
    if config.distribute == "auto" and sum(weights) <= here:
        return None, (
            f"not distributed: the model ({sum(weights) >> 20} MiB) fits in this machine's "
            f"available memory, and a pipeline of one request computes on one device at a "
            f"time plus a network hop per boundary; distribute='always' to split anyway"
        )
    devices: list[tuple[str, dict[str, str | int | float | bool], int]] = []
    if config.local_share:
        devices.append((DEFAULT_BACKEND, {}, here))
    for m in members[: len(parts) - len(devices)]:
        options = {"endpoint": m.endpoint, "server_key": m.public, "cluster": config.name}
        devices.append(("cluster", options, int(m.memory * MEMORY_SHARE)))
    # With a share here, the head stays here too: the logits ([V] floats a token, 200 KB for
    # a 50k vocabulary) never cross the network, only hidden states ([H]) do.
    split = len(parts) - 1 if config.local_share else len(parts)
    ranges = split_by_memory(weights[:split], [max(c, 1) for _, _, c in devices])
    segments = tuple(
        SegmentPlacement(start, end, backend, tuple(options.items()))
        for (start, end), (backend, options, _) in zip(ranges, devices)
    )
    if split < len(parts):
        segments += (SegmentPlacement(split, len(parts), DEFAULT_BACKEND),)
    names = ", ".join(m.node_id for m in members[: len(segments)])
    return Placement(segments), f"pipeline over this machine and {names}{why_skipped}"
