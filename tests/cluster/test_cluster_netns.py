"""Three workers, each in its own network namespace behind a veth pair shaped with `tbf`,
latency added by a delaying TCP proxy (this kernel has no netem): the engine's tensor-parallel
split and its pipeline over them give the single-device greedy tokens, and when one
namespace's link is cut mid-generation the engine re-places that share here and the tokens
stay the same.

Needs root (`ip netns add`); skipped with the reason where that is refused. The namespaces,
veths and worker processes are removed in a finalizer, whatever happens."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench.delay_proxy import DelayProxy
from edge.cluster.client import WorkerClient
from edge.cluster.keys import KeyStore
from edge.cluster.members import Member
from edge.cluster.placement import ClusterConfig, cluster_placement
from edge.engine import Engine, EngineConfig
from edge.package import open_package
from tests.cluster.conftest import REPO, pair

pytestmark = pytest.mark.timeout(150)
PROMPT = [1, 17, 42, 99, 5, 230, 64, 12]
TOKENS = 12
CUT_AFTER = 4
DELAY_S = 0.002  # one way: a 4 ms RTT, a busy home Wi-Fi
RATE = "100mbit"  # a home LAN


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check, timeout=30)


@dataclass
class Namespace:
    """One emulated device: a namespace and the veth pair joining it to this one."""

    name: str
    root_if: str
    inner_if: str
    root_ip: str
    inner_ip: str
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *cmd: str, **kwargs: object) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", self.name, *cmd], **kwargs)  # type: ignore[call-overload]
        self.procs.append(proc)
        return proc

    def cut(self) -> None:
        _ip("link", "set", self.root_if, "down")


def _make(tag: str, index: int, subnet: int) -> Namespace:
    ns = Namespace(
        name=f"edge-{tag}-{index}",
        root_if=f"ev{tag}{index}",
        inner_if=f"en{tag}{index}",
        root_ip=f"198.18.{subnet}.{4 * index + 1}",
        inner_ip=f"198.18.{subnet}.{4 * index + 2}",
    )
    _ip("link", "add", ns.root_if, "type", "veth", "peer", "name", ns.inner_if, "netns", ns.name)
    _ip("addr", "add", f"{ns.root_ip}/30", "dev", ns.root_if)
    _ip("link", "set", ns.root_if, "up")
    _ip("-n", ns.name, "addr", "add", f"{ns.inner_ip}/30", "dev", ns.inner_if)
    _ip("-n", ns.name, "link", "set", ns.inner_if, "up")
    _ip("-n", ns.name, "link", "set", "lo", "up")
    shape = ("qdisc", "add", "dev")
    tbf = ("root", "tbf", "rate", RATE, "burst", "64kb", "latency", "50ms")
    for cmd in (
        ["tc", *shape, ns.root_if, *tbf],
        ["ip", "netns", "exec", ns.name, "tc", *shape, ns.inner_if, *tbf],
    ):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            pytest.skip(f"cannot shape bandwidth with tbf here: {done.stderr.strip()}")
    return ns


def _remove(ns: Namespace) -> None:
    for proc in ns.procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
    _ip("netns", "del", ns.name, check=False)
    _ip("link", "del", ns.root_if, check=False)  # gone with the namespace's end, normally


@pytest.fixture
def namespaces() -> Iterator[list[Namespace]]:
    if shutil.which("ip") is None or shutil.which("tc") is None:
        pytest.skip("needs iproute2 (ip, tc)")
    tag = secrets.token_hex(2)
    subnet = secrets.randbelow(256)  # in 198.18.0.0/15, the range kept for such tests
    made: list[Namespace] = []
    try:
        for index in range(3):
            name = f"edge-{tag}-{index}"
            added = _ip("netns", "add", name, check=False)
            if added.returncode != 0:
                pytest.skip(f"`ip netns add` is not permitted here: {added.stderr.strip()}")
            made.append(Namespace(name, f"ev{tag}{index}", "", "", ""))  # removed if _make fails
            made[-1] = _make(tag, index, subnet)
        yield made
    finally:
        for ns in made:
            _remove(ns)


def _greedy(engine: Engine, cut: Callable[[], None] | None = None) -> list[int]:
    logits = engine.prefill(PROMPT)[0]
    out = []
    for i in range(TOKENS):
        out.append(int(logits.argmax()))
        if cut is not None and i == CUT_AFTER:
            cut()
        logits = engine.decode(out[-1])
    return out


def test_three_namespaced_workers_survive_a_cut_link(
    tiny_package: Path, coordinator: KeyStore, namespaces: list[Namespace], tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    started = time.monotonic()
    stores = []
    for index, ns in enumerate(namespaces):
        store = KeyStore(tmp_path / f"ns-worker{index}")
        pair(coordinator, "home", store)
        stores.append(store)
        env = {
            **os.environ,
            "EDGE_CONFIG_DIR": str(tmp_path / f"ns-worker{index}"),
            "PYTHONPATH": str(REPO),
        }
        ns.run(
            sys.executable,
            *("-m", "edge.cli.main", "cluster", "serve", str(tiny_package)),
            *("--listen", f"{ns.inner_ip}:0", "--no-advertise", "--no-profile"),
            *("--threads", "1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
    proxies: list[DelayProxy] = []
    members = []
    try:
        for ns, store in zip(namespaces, stores):
            proc = ns.procs[0]
            line = proc.stdout.readline() if proc.stdout else ""
            assert line.startswith("serving"), line + (proc.stderr.read() if proc.stderr else "")
            port = int(line.split()[-1].rsplit(":", 1)[1])
            proxies.append(DelayProxy((ns.inner_ip, port), lambda: DELAY_S))
            node_id, keys = store.node()
            members.append(Member(node_id, proxies[-1].endpoint, keys.public, 1 << 30))
            assert all("tbf" in shown for shown in _qdiscs(ns)), _qdiscs(ns)

        keys = coordinator.cluster_keys("home")
        with WorkerClient(members[0].endpoint, members[0].public, keys) as link:
            rtt = min(link.ping() for _ in range(5))
        assert rtt >= 2 * DELAY_S, rtt  # the proxy's latency is on the path

        package = open_package(tiny_package)
        single = Engine(open_package(tiny_package), EngineConfig(threads=1, max_context=64))
        expected = _greedy(single)
        single.close()

        tensor, why = cluster_placement(
            package, ClusterConfig("home", distribute="always", mode="tensor"), members
        )
        assert tensor is not None and "tensor" in why, why
        engine = Engine(package, EngineConfig(threads=1, max_context=64, placement=tensor))
        try:
            assert not engine.fallbacks, engine.fallbacks
            assert _greedy(engine) == expected
        finally:
            engine.close()

        config = ClusterConfig("home", distribute="always", mode="pipeline", local_share=False)
        placement, why = cluster_placement(package, config, members)
        assert placement is not None, why
        assert [s.backend for s in placement.segments] == ["cluster"] * 3, placement

        engine = Engine(package, EngineConfig(threads=1, max_context=64, placement=placement))
        try:
            assert not engine.fallbacks, engine.fallbacks
            assert _greedy(engine) == expected

            engine.reset()
            cut_at = placement.segments[1]
            assert _greedy(engine, namespaces[1].cut) == expected
            assert [(f.start, f.end, f.backend) for f in engine.fallbacks] == [
                (cut_at.start, cut_at.end, "cluster")
            ]
        finally:
            engine.close()
    finally:
        for proxy in proxies:
            proxy.close()
    assert time.monotonic() - started < 60


def _qdiscs(ns: Namespace) -> list[str]:
    """The queueing disciplines on both ends of the namespace's veth pair."""
    commands = (
        ["tc", "qdisc", "show", "dev", ns.root_if],
        ["ip", "netns", "exec", ns.name, "tc", "qdisc", "show", "dev", ns.inner_if],
    )
    return [subprocess.run(c, capture_output=True, text=True, timeout=30).stdout for c in commands]
