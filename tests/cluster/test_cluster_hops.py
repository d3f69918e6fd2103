"""Pipeline stages on workers pass their output worker to worker: a token crosses the network
once per boundary (this machine -> A -> B -> this machine), not twice (A -> here -> B). The
greedy tokens stay the single device's, a stage lost mid-step (first, middle or last) is
re-placed here, and the worker a coordinator introduced as the previous stage may send its
output and nothing else."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from edge.cluster.client import WorkerClient
from edge.cluster.frames import Message
from edge.cluster.keys import KeyStore, new_keypair
from edge.cluster.status import cluster_status
from edge.cluster.transport import LinkConfig, client_socket, send
from edge.engine import Engine, EngineConfig
from edge.package import open_package
from edge.placement import Placement
from tests.cluster.relay import Relay

pytestmark = pytest.mark.timeout(120)
PROMPT = [1, 17, 42, 99, 5, 230, 64, 12]
FAST = LinkConfig(heartbeat_interval_s=0.2, heartbeat_timeout_s=1.0, connect_timeout_s=3.0)


def _stages(workers, cuts: list[int]) -> Placement:
    remote = [{"endpoint": w.endpoint, "server_key": w.public, "cluster": "home"} for w in workers]
    return Placement.split(6, [(cut, "cluster", r) for cut, r in zip(cuts, remote)])


def _hops(coordinator: KeyStore, worker) -> dict[str, int]:
    keys = coordinator.cluster_keys("home")
    with WorkerClient(worker.endpoint, worker.public, keys, FAST) as link:
        return dict(link.info()["hops"])


def _generate(engine: Engine, n: int, kill=None, at: int = -1) -> list[int]:
    logits = engine.prefill(PROMPT)[0]
    out = []
    for i in range(n):
        out.append(int(logits.argmax()))
        if i == at:
            kill()
        logits = engine.decode(out[-1])
    return out


@pytest.fixture
def expected(tiny_package) -> list[int]:
    single = Engine(open_package(tiny_package), EngineConfig(threads=1, max_context=64))
    tokens = _generate(single, 10)
    single.close()
    return tokens


def test_three_stages_pass_hidden_states_worker_to_worker(
    tiny_package, coordinator, start_worker, monkeypatch, expected
) -> None:
    """Token ids to logits on three workers: the first two forward every step's output to
    the next stage (one prompt step and ten decode steps), the same tokens come out, and
    `edge cluster status` says where each stage's output goes."""
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    workers = [start_worker(coordinator) for _ in range(3)]
    config = EngineConfig(threads=1, max_context=64, placement=_stages(workers, [0, 2, 4]))
    engine = Engine(open_package(tiny_package), config)
    assert _generate(engine, 10) == expected
    hops = [_hops(coordinator, w) for w in workers]
    assert hops == [
        {"received": 0, "sent": 11},
        {"received": 11, "sent": 11},
        {"received": 11, "sent": 0},
    ]
    assert not engine.fallbacks
    peers = [w.endpoint.removeprefix("tcp://") for w in workers]
    holds = {r.address: r.holds for r in cluster_status("home", peers, 0, coordinator)}
    assert f"output to {workers[1].endpoint} directly (11 steps handed on" in holds[peers[0]]
    assert "0 steps handed on, 11 taken from the previous stage" in holds[peers[2]]
    engine.close()


@pytest.mark.parametrize("lost", [0, 1])  # the last: test_cluster_backend's second worker
def test_a_stage_lost_mid_generation_is_replaced_here(
    tiny_package, coordinator, start_worker, monkeypatch, expected, lost
) -> None:
    """kill -9 the first or the middle stage after five tokens: the failure is pinned on
    the stage that left (the first one's is seen while collecting its forward's reply, the
    middle one's while the last waits for its input), its parts run here, the stages left
    are linked anew, and the tokens are the single device's."""
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    workers = [start_worker(coordinator) for _ in range(3)]
    config = EngineConfig(threads=1, max_context=64, placement=_stages(workers, [0, 2, 4]))
    engine = Engine(open_package(tiny_package), config)
    assert _generate(engine, 10, kill=workers[lost].proc.kill, at=4) == expected
    assert [(f.start, f.end) for f in engine.fallbacks] == [[(0, 2), (2, 4)][lost]]
    assert "was lost" in engine.fallbacks[0].reason
    before = [_hops(coordinator, w) for i, w in enumerate(workers) if i != lost]
    engine.reset()
    assert _generate(engine, 3) == expected[:3]  # the survivors, linked anew, still agree
    after = [_hops(coordinator, w) for i, w in enumerate(workers) if i != lost]
    moved = [{k: a[k] - b[k] for k in a} for a, b in zip(after, before)]
    if lost == 1:  # A -> here -> C: nothing goes worker to worker any more
        assert moved == [{"received": 0, "sent": 0}] * 2
    else:  # here -> B -> C: the two left still hand over four steps
        assert moved == [{"received": 0, "sent": 4}, {"received": 4, "sent": 0}]
    engine.close()


def test_the_previous_stage_may_only_forward(tiny_package, coordinator, start_worker) -> None:
    """The key a coordinator introduced as the previous stage gets through the handshake, but
    a load, a step or an info from it goes unanswered and changes nothing, and its forward
    feeds only the step that waits for it (a ring's hand-over, no step at all); its ping
    is answered (how a ring's link is measured). A key never introduced cannot connect at
    all, and a coordinator cannot send a forward."""
    worker = start_worker(coordinator)
    keys = coordinator.cluster_keys("home")
    link = WorkerClient(worker.endpoint, worker.public, keys, FAST)
    link.load_slice(2, 4, max_context=32)
    peer = new_keypair()
    link.request("link", {"upstream": peer.public})

    with pytest.raises(Exception, match=r"refused|handshake"):
        WorkerClient(worker.endpoint, worker.public, new_keypair(), FAST)

    ctx = zmq.Context.instance()

    sock = client_socket(ctx, peer, worker.public, FAST)
    sock.connect(worker.endpoint)
    for kind in ("load", "step", "info", "unload", "link"):
        send(sock, Message(kind, 1, {"start": 0, "end": 6, "upstream": None}))
    hidden = np.random.default_rng(0).standard_normal((1, 3, 64)).astype(np.float32)
    send(sock, Message("forward", 1, {"token": 99, "position": 0}, (hidden,)))
    send(sock, Message("forward", 1, {"token": 99, "ring": "sum"}, (hidden[0],)))
    assert not sock.poll(1000), "a peer's messages get no answer"
    assert link.info()["slice"]["start"] == 2  # its load changed nothing
    send(sock, Message("ping", 5))
    assert sock.poll(1000) and b'"ping"' in sock.recv_multipart()[0]

    with pytest.raises(Exception, match="not a request"):
        link.request("forward", {"token": 1, "position": 0}, (hidden,))

    # A step waiting for its input runs on the peer's forward with the same token only.
    ident = link.submit("step", {"position": 0, "from_peer": 7})
    send(sock, Message("forward", 2, {"token": 6, "position": 0}, (hidden,)))
    time.sleep(0.3)
    send(sock, Message("forward", 3, {"token": 7, "position": 0}, (hidden,)))
    out = link.step_reply(ident)
    assert out.shape == (1, 3, 64)
    reference = link.step(hidden, 0)
    np.testing.assert_array_equal(out, reference)
    assert link.info()["hops"]["received"] == 1
    sock.close(0)
    link.close()


def test_workers_that_cannot_reach_each_other_go_through_here(
    tiny_package, coordinator, start_worker, monkeypatch, expected
) -> None:
    """The second worker is reached through an address only this machine can use (a relay
    that takes one connection): the first cannot connect to it, so the stages stay unlinked
    (said on the log), each output comes back through here, and the tokens are the same."""
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    first, second = start_worker(coordinator), start_worker(coordinator)
    relay = Relay(second.endpoint)
    remote = [
        {"endpoint": first.endpoint, "server_key": first.public, "cluster": "home"},
        {"endpoint": relay.endpoint, "server_key": second.public, "cluster": "home"},
    ]
    placement = Placement.split(6, [(0, "cluster", remote[0]), (3, "cluster", remote[1])])
    config = EngineConfig(threads=1, max_context=64, placement=placement)
    engine = Engine(open_package(tiny_package), config)
    assert _generate(engine, 10) == expected
    assert _hops(coordinator, first) == {"received": 0, "sent": 0}
    assert not engine.fallbacks
    engine.close()
