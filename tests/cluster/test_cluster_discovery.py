"""Interface choice (virtual bridges never by accident), explicit peers, and a loopback mDNS
round trip where the machine allows multicast."""

from __future__ import annotations

import pytest

from edge.cluster.discovery import Interface, browse_addresses, parse_peers, select_interfaces
from edge.cluster.transport import parse_peer
from edge.errors import ConfigError

HOST = [
    Interface("lo", ("127.0.0.1",)),
    Interface("eth0", ("192.168.1.20",)),
    Interface("wlan0", ("192.168.1.21",)),
    Interface("docker0", ("172.17.0.1",)),
    Interface("br-3f2a", ("172.18.0.1",)),
    Interface("veth12ab", ("169.254.3.3",)),
    Interface("virbr0", ("192.168.122.1",)),
]


def test_virtual_bridges_and_loopback_are_skipped_unless_named() -> None:
    assert [i.name for i in select_interfaces(available=HOST)] == ["eth0", "wlan0"]
    assert [i.name for i in select_interfaces(available=HOST, loopback=True)] == [
        "lo",
        "eth0",
        "wlan0",
    ]
    assert [i.name for i in select_interfaces(["docker0"], HOST)] == ["docker0"]
    with pytest.raises(ConfigError, match="no IPv4 interface named eth9"):
        select_interfaces(["eth9"], HOST)


def test_explicit_peers() -> None:
    assert parse_peer("10.0.0.7:5710") == ("10.0.0.7", 5710)
    assert parse_peer("[fe80::1]:5710") == ("fe80::1", 5710)
    assert parse_peer("pi.local", 5710) == ("pi.local", 5710)
    assert parse_peer("0.0.0.0:0", listen=True) == ("0.0.0.0", 0)
    for bad in ("pi.local", "host:99999", "host:0", ":5710", "host:x"):
        with pytest.raises(ConfigError):
            parse_peer(bad)
    (found,) = parse_peers(["pi.local:5712"])
    assert (found.host, found.port, found.source) == ("pi.local", 5712, "peer")


def test_mdns_round_trip_on_loopback() -> None:
    """A node advertised on 127.0.0.1 is browsed back with its properties (multicast stays
    on the loopback interface)."""
    pytest.importorskip("zeroconf")
    from edge.cluster.discovery import Advertiser, browse

    advertiser = Advertiser("test-node-1", 5999, ["127.0.0.1"], {"cluster": "home", "cores": 2})
    try:
        found = browse(1.5, ["127.0.0.1"], cluster="home")
        other = browse(0.5, ["127.0.0.1"], cluster="elsewhere")
    finally:
        advertiser.close()
    if not found:
        pytest.skip("no multicast on this machine's loopback")
    (node,) = [f for f in found if f.node_id == "test-node-1"]
    assert (node.host, node.port, node.properties["cores"]) == ("127.0.0.1", 5999, "2")
    assert not [f for f in other if f.node_id == "test-node-1"]


def test_the_coordinator_browses_on_chosen_interfaces() -> None:
    """The coordinator looks for workers where it is told (`--interface`), else everywhere but
    loopback and bridges; a name that is not an interface here is an error, not silence."""
    assert browse_addresses(["lo"]) == ["127.0.0.1"]
    assert not any(a.startswith("127.") for a in browse_addresses())
    with pytest.raises(ConfigError, match="no IPv4 interface named nosuch0"):
        browse_addresses(["nosuch0"])
