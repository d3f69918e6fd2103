"""`edge cluster status`: paired devices, which answer, their RTT and what they hold."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from edge.cluster.discovery import Found, browse, browse_addresses, parse_peers
from edge.cluster.errors import ClusterError
from edge.cluster.keys import KeyStore
from edge.cluster.transport import LinkConfig, tcp_endpoint


@dataclass(frozen=True)
class DeviceStatus:
    node_id: str
    address: str
    state: str  # "ok", "unreachable", "not paired", "paired" (not found on the network)
    rtt_s: float | None = None
    holds: str = ""


def cluster_status(
    cluster: str,
    peers: Sequence[str] = (),
    mdns_s: float = 2.0,
    store: KeyStore | None = None,
    interfaces: Sequence[str] = (),
) -> list[DeviceStatus]:
    """Probe every device found (mDNS on `interfaces`, see `browse_addresses`, and `peers`)
    with the cluster's key; list the paired ones never found too."""
    from edge.cluster.client import WorkerClient

    store = store or KeyStore()
    keys = store.cluster_keys(cluster)
    paired = {p.node_id: p for p in store.peers(cluster).values() if p.role == "worker"}
    found: list[Found] = parse_peers(peers)
    if mdns_s > 0:
        found += browse(mdns_s, browse_addresses(interfaces), cluster=None)
    config = LinkConfig(connect_timeout_s=1.0, request_timeout_s=5.0)
    rows, seen = [], set()
    for node in found:
        address = f"{node.host}:{node.port}"
        # mDNS names the node; an explicit peer is tried with every paired worker's key.
        candidates = [paired[node.node_id]] if node.node_id in paired else list(paired.values())
        row = DeviceStatus(node.node_id, address, "not paired")
        for peer in candidates if node.source == "peer" or node.node_id in paired else []:
            try:
                with WorkerClient(
                    tcp_endpoint(node.host, node.port), peer.public, keys, config, peer.name
                ) as link:
                    rtt = min(link.ping() for _ in range(3))
                    info = link.info()
            except ClusterError:
                row = DeviceStatus(node.node_id, address, "unreachable")
                continue
            holds = f"{_held(info.get('slice'))} of {info.get('package')}{_hops(info)}"
            free = int(info.get("memory_budget", 0)) >> 20
            row = DeviceStatus(
                peer.node_id, address, "ok", rtt, f"{holds}; {free} MiB free{_memory(info)}"
            )
            seen.add(peer.node_id)
            break
        rows.append(row)
    rows += [
        DeviceStatus(p.node_id, "-", "paired") for p in paired.values() if p.node_id not in seen
    ]
    return rows


def _held(held: object) -> str:
    """What a worker's `info` says it holds: a range of parts, or a tensor-parallel share."""
    if not isinstance(held, dict):
        return "nothing yet"
    if "share" in held:
        share, blocks = held.get("share") or {}, held.get("blocks") or ["?", "?"]
        heads, ffn = share.get("heads", ["?", "?"]), share.get("ffn", ["?", "?"])
        return (
            f"heads [{heads[0]}, {heads[1]}) and FFN columns [{ffn[0]}, {ffn[1]}) of blocks "
            f"[{blocks[0]}, {blocks[1]}), {int(held.get('bytes', 0)) >> 20} MiB{_reductions(held)}"
        )
    return f"parts [{held.get('start')}, {held.get('end')})"


def _reductions(held: dict) -> str:
    """How many reductions a share took part in, star and ring, and where its ring hands
    the hidden states and sums on (the next worker, directly)."""
    counts, target = held.get("reductions"), held.get("next_in_ring")
    if not isinstance(counts, dict):
        return ""  # a worker from before rings
    where = f", ring hands on to {target} directly" if target else ""
    return f" ({counts.get('star', 0)} star, {counts.get('ring', 0)} ring reductions{where})"


def _hops(info: dict) -> str:
    """Where a pipeline stage hands its output (the next stage's worker, directly), and how
    many steps it passed on and took from the stage before."""
    held, hops = info.get("slice"), info.get("hops")
    target = held.get("next_stage") if isinstance(held, dict) else None
    if not isinstance(hops, dict) or not (target or any(hops.values())):
        return ""
    sent, received = hops.get("sent", 0), hops.get("received", 0)
    where = f", output to {target} directly" if target else ""
    return f"{where} ({sent} steps handed on, {received} taken from the previous stage)"


def _memory(info: dict) -> str:
    """A worker's resident memory now and at its peak, and the peak its slice was planned to
    reach at the context it holds (its idle process plus the slice's predicted growth)."""
    rss, peak = info.get("rss"), info.get("peak_rss")
    if not isinstance(rss, int) or not isinstance(peak, int):
        return ""  # not Linux, or a worker from before these were reported
    held, idle = info.get("slice"), info.get("idle_rss")
    growth = held.get("predicted_growth") if isinstance(held, dict) else None
    planned = (
        f" (planned {(idle + growth) >> 20})"
        if isinstance(idle, int) and isinstance(growth, int)
        else ""
    )
    return f"; RSS {rss >> 20} MiB, peak {peak >> 20} MiB{planned}"
