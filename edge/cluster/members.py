"""Finding the workers a coordinator can use: paired, answering, holding the same package
(its manifest's sha256: a different one would compute garbage), with each link's measured
round trip and bandwidth; a worker waiting for the package (`serve PKG --receive`) is sent it
first."""

from __future__ import annotations

import hashlib
import statistics
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edge.cluster.errors import ClusterError
from edge.format import MANIFEST_FILE
from edge.package import Package

if TYPE_CHECKING:
    from edge.cluster.client import WorkerClient
    from edge.cluster.keys import CurveKeys, Peer
    from edge.cluster.placement import ClusterConfig

PINGS = 5
# A ping carrying this many bytes, against an empty one, measures a link's bandwidth.
LINK_PROBE_BYTES = 256 << 10
REOPEN_S = 60.0  # a worker that received the package reopens its port within this time


@dataclass(frozen=True)
class Member:
    """A paired worker that answered, holds this package, and has `memory` bytes to give;
    `rtt_s`: its measured round trip; `bandwidth_gbs`: its measured memory bandwidth (None:
    not measured, taken as this machine's); `idle_rss` and `runtimes`: its process's resident
    bytes before any slice and the runtimes they include, which its memory plan builds on."""

    node_id: str
    endpoint: str
    public: str
    memory: int
    rtt_s: float = 0.0
    bandwidth_gbs: float | None = None
    idle_rss: int | None = None  # its process before any slice (None: not reported)
    runtimes: tuple[str, ...] = ()  # the runtimes that idle RSS holds (imported at start)
    link_bps: float | None = None  # measured link bytes/s (None: not measured, not limiting)


def package_id(package: Package) -> str:
    """What workers report of their package: the sha256 of its manifest file."""
    return hashlib.sha256(package.files.read(MANIFEST_FILE)).hexdigest()


def find_members(package: Package, config: ClusterConfig) -> tuple[list[Member], list[str]]:
    """Paired workers found (mDNS and `config.peers`) holding `package`, with their measured
    round trips; and why others were left out."""
    from edge.cluster.client import WorkerClient
    from edge.cluster.discovery import browse, browse_addresses, parse_peers
    from edge.cluster.keys import KeyStore
    from edge.cluster.transport import LinkConfig, tcp_endpoint

    store = KeyStore()
    keys = store.cluster_keys(config.name)
    paired = {p.node_id: p for p in store.peers(config.name).values() if p.role == "worker"}
    found = parse_peers(config.peers)
    if config.mdns_s:
        found += browse(config.mdns_s, browse_addresses(config.interfaces))
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
                    if "receiving" in info and config.send and info.get("package_id") is None:
                        _send(link, package, peer.name or peer.node_id, config.progress)
                if "receiving" in info and config.send:
                    info = _reopened(endpoint, peer, keys, wanted)
                with WorkerClient(endpoint, peer.public, keys, link_config, peer.name) as link:
                    rtt, link_bps = measure(link)
            except ClusterError as exc:
                skipped.append(f"{endpoint} ({peer.node_id}): {exc}")
                continue
            if info.get("package_id") != wanted:
                skipped.append(f"{endpoint} ({peer.node_id}) holds another package")
                break
            memory = int(info.get("memory_budget") or info.get("memory_available") or 0)
            profile = info.get("profile") or {}
            bandwidth = profile.get("memory_bandwidth_gbs") if isinstance(profile, dict) else None
            idle, runtimes = info.get("idle_rss"), info.get("runtimes")
            members.append(
                Member(
                    peer.node_id,
                    endpoint,
                    peer.public,
                    memory,
                    rtt,
                    float(bandwidth)
                    if isinstance(bandwidth, (int, float)) and bandwidth > 0
                    else None,
                    idle if isinstance(idle, int) and idle > 0 else None,
                    tuple(str(r) for r in runtimes) if isinstance(runtimes, list) else (),
                    link_bps,
                )
            )
            break
    return members, skipped


def measure(link: WorkerClient) -> tuple[float, float | None]:
    """A link's round trip (the median of `PINGS`) and bandwidth (`measure_link`)."""
    rtt = statistics.median(link.ping() for _ in range(PINGS))
    return rtt, measure_link(link, rtt)


def measure_link(link: WorkerClient, rtt_s: float) -> float | None:
    """Bytes/s a ping carrying `LINK_PROBE_BYTES` adds over an empty one's `rtt_s` (the worker
    reads and drops them); None where the difference is too small to measure (loopback)."""
    import numpy as np

    probe = np.zeros(LINK_PROBE_BYTES // 4, np.float32)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        link.request("ping", buffers=(probe,))
        times.append(time.perf_counter() - start)
    extra = statistics.median(times) - rtt_s
    return LINK_PROBE_BYTES / extra if extra > 1e-4 else None


def _send(link: WorkerClient, package: Package, name: str, progress: bool) -> None:
    """Send `package` to a worker waiting for one, with a progress bar over its bytes."""
    from tqdm.auto import tqdm

    from edge.cluster.transfer import send_package

    total = sum(entry.size for entry in package.manifest.files)
    done: dict[str, int] = {}
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=f"send to {name}", disable=not progress
    ) as bar:

        def sent(path: str, offset: int, size: int) -> None:
            bar.update(offset - done.get(path, 0))
            done[path] = offset

        send_package(link, package.root, progress=sent)


def _reopened(endpoint: str, peer: Peer, keys: CurveKeys, wanted: str) -> dict[str, Any]:
    """The info of a worker that has just received the package and reopens its port to serve
    it (`edge cluster serve --receive`): retried for up to `REOPEN_S` seconds."""
    import time

    from edge.cluster.client import WorkerClient
    from edge.cluster.transport import LinkConfig

    deadline = time.monotonic() + REOPEN_S
    config = LinkConfig(connect_timeout_s=2.0, request_timeout_s=10.0)
    while True:
        try:
            with WorkerClient(endpoint, peer.public, keys, config, peer.name) as link:
                info = link.info()
            if info.get("package_id") == wanted and "receiving" not in info:
                return info
        except ClusterError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise ClusterError(f"{endpoint} did not come back serving the package it received")
        time.sleep(0.5)
