"""Finding workers: mDNS (`_edge._tcp.local.`) on chosen interfaces, plus explicit peers.

Interfaces are chosen, never taken wholesale: docker, bridge, veth and libvirt interfaces
(`docker*`, `br-*`, `veth*`, `virbr*`) are skipped unless named, so a worker does not listen on,
or advertise, a container network by accident. A node advertises its cluster name, stable
node id, port and a few numbers (cores, free memory); the coordinator still authenticates
whatever it finds (discovery is a hint, the Curve key is the proof).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.cluster.errors import ClusterUnavailableError
from edge.errors import ConfigError

SERVICE = "_edge._tcp.local."
VIRTUAL_PREFIXES = ("docker", "br-", "veth", "virbr")
DEFAULT_PORT = 5710
PAIRING_PORT = 5711


@dataclass(frozen=True)
class Interface:
    name: str
    addresses: tuple[str, ...]  # IPv4


@dataclass(frozen=True)
class Found:
    """A node seen on the network (not yet authenticated)."""

    node_id: str
    host: str
    port: int
    properties: Mapping[str, str] = field(default_factory=dict)
    source: str = "mdns"  # or "peer" for --peer


def list_interfaces() -> list[Interface]:
    import psutil

    found = []
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        ips = tuple(a.address for a in addrs if a.family == socket.AF_INET)
        if ips:
            found.append(Interface(name, ips))
    return found


def is_virtual(name: str) -> bool:
    return name.startswith(VIRTUAL_PREFIXES)


def select_interfaces(
    named: Sequence[str] = (),
    available: Sequence[Interface] | None = None,
    *,
    loopback: bool = False,
) -> list[Interface]:
    """The interfaces to listen and advertise on: those `named` (each must exist), else every
    IPv4 interface except virtual bridges and (unless `loopback`) the loopback."""
    available = list_interfaces() if available is None else list(available)
    if named:
        by_name = {i.name: i for i in available}
        missing = [n for n in named if n not in by_name]
        if missing:
            raise ConfigError(
                f"no IPv4 interface named {', '.join(missing)}; "
                f"this machine has {', '.join(sorted(by_name)) or 'none'}"
            )
        return [by_name[n] for n in named]
    return [
        i
        for i in available
        if not is_virtual(i.name)
        and (loopback or not all(a.startswith("127.") for a in i.addresses))
    ]


def browse_addresses(named: Sequence[str] = ()) -> list[str]:
    """The IPv4 addresses a coordinator browses mDNS on: those of the interfaces `named`, else
    of every interface but loopback and virtual bridges (a docker bridge answering first must
    not hide the LAN). Empty where there is none: zeroconf's own default then."""
    return [a for i in select_interfaces(named) for a in i.addresses]


def parse_peers(peers: Sequence[str], default_port: int = DEFAULT_PORT) -> list[Found]:
    from edge.cluster.transport import parse_peer

    return [
        Found(f"{host}:{port}", host, port, {}, "peer")
        for host, port in (parse_peer(p, default_port) for p in peers)
    ]


def _zeroconf():
    try:
        import zeroconf
    except ImportError as exc:
        raise ClusterUnavailableError(
            'discovery needs zeroconf: pip install "edge[cluster]"'
        ) from exc
    return zeroconf


class Advertiser:
    """Announce this node on the chosen interfaces until `close()`."""

    def __init__(
        self,
        node_id: str,
        port: int,
        addresses: Sequence[str],
        properties: Mapping[str, str | int],
    ) -> None:
        zc = _zeroconf()
        self._zc = zc.Zeroconf(interfaces=list(addresses) or zc.InterfaceChoice.Default)
        props = {str(k): str(v)[:200] for k, v in {**properties, "node": node_id}.items()}
        self.info = zc.ServiceInfo(
            SERVICE,
            f"{node_id}.{SERVICE}",
            addresses=[socket.inet_aton(a) for a in addresses],
            port=port,
            properties=props,
            server=f"{node_id}.local.",
        )
        self._zc.register_service(self.info)

    def close(self) -> None:
        try:
            self._zc.unregister_service(self.info)
        finally:
            self._zc.close()


def browse(
    timeout_s: float = 2.0, addresses: Sequence[str] = (), cluster: str | None = None
) -> list[Found]:
    """Nodes answering on mDNS within `timeout_s` (of `cluster` when given)."""
    zc = _zeroconf()
    conf = zc.Zeroconf(interfaces=list(addresses) or zc.InterfaceChoice.Default)
    names: set[str] = set()

    def on_change(**event: Any) -> None:  # zeroconf passes keyword arguments
        names.add(event["name"])

    # Multicast questions (QM), not zeroconf's default unicast-reply first question (QU): a
    # unicast reply reaches one of the sockets sharing port 5353 on the asking host (with a
    # worker on the same machine, often the worker's own), so the first answer was lost and
    # only the second question, a second later, was answered; two seconds were not enough.
    browser = zc.ServiceBrowser(
        conf, SERVICE, handlers=[on_change], question_type=zc.DNSQuestionType.QM
    )
    try:
        time.sleep(timeout_s)
        found = []
        for name in sorted(names):
            info = conf.get_service_info(SERVICE, name, timeout=500)
            if info is None or not info.parsed_addresses():
                continue
            props = {
                k.decode(errors="replace"): (v or b"").decode(errors="replace")
                for k, v in (info.properties or {}).items()
            }
            served = [c for c in props.get("cluster", "").split(",") if c]
            if cluster is not None and served and cluster not in served:
                continue  # a worker that names its clusters, not this one
            node = props.get("node", name.removesuffix("." + SERVICE))
            found.append(Found(node, info.parsed_addresses()[0], int(info.port or 0), props))
        return found
    finally:
        browser.cancel()
        conf.close()
