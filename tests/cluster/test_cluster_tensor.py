"""Tensor parallel: blocks sharded by heads and FFN columns over this process and worker
processes on loopback (a star or a ring reduction per attention and per FFN), with the
single-device greedy tokens; a worker killed mid-generation is re-sharded around, on the
survivors."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest

from devices.spec_forward.numpy_forward import block_forward, rope_tables
from devices.spec_forward.weights import load_model_weights
from edge.cluster.errors import ProtocolError
from edge.cluster.frames import Message
from edge.cluster.ring import Ring
from edge.cluster.shard_runner import Reduction, ShardRunner, finish, load_share
from edge.cluster.shards import Share, ffn_unit, split_shares
from edge.cluster.status import cluster_status
from edge.cluster.tensor_backend import TensorBackend, parse_weights, parse_workers
from edge.engine import Engine, EngineConfig
from edge.errors import ConfigError
from edge.package import open_package
from edge.placement import Placement
from tests.cluster.relay import Relay

pytestmark = pytest.mark.timeout(180)
PROMPT = [1, 17, 42, 99, 5, 230, 64, 12]


def _greedy(engine: Engine, n: int, kill=None) -> list[int]:
    logits = engine.prefill(PROMPT)[0]
    out = []
    for i in range(n):
        out.append(int(logits.argmax()))
        if kill is not None and i == 3:
            kill()
        logits = engine.decode(out[-1])
    return out


def _tensor(
    package, workers, weights: str = "", threads: int = 1, reduction: str = "auto", via=None
) -> Placement:
    """The blocks over this machine and `workers` (`via`: the endpoints to reach them by)."""
    count = len(open_package(package).manifest.parts)
    endpoints = via or [w.endpoint for w in workers]
    options = {
        "cluster": "home",
        "workers": ",".join(f"{e}|{w.public}" for e, w in zip(endpoints, workers)),
        "weights": weights,
        "threads": threads,
        "reduction": reduction,
    }
    return Placement.split(count, [(0, "ort_cpu"), (1, "tensor", options), (count - 1, "ort_cpu")])


# ---- the split --------------------------------------------------------------------------------


def test_shares_cover_every_head_and_column_unevenly(tiny_package) -> None:
    spec = open_package(tiny_package).manifest.spec  # 4 heads, 2 KV heads, FFN 128
    shares = split_shares(spec, [2.0, 1.0, 1.0], ffn_unit=32)
    assert [s.heads for s in shares] == [(0, 2), (2, 3), (3, 4)]
    assert [s.ffn for s in shares] == [(0, 64), (64, 96), (96, 128)]
    assert [s.kv_heads(spec) for s in shares] == [(0, 1), (1, 2), (1, 2)]
    with pytest.raises(ConfigError, match="at most one device per head"):
        split_shares(spec, [1.0] * 5)
    with pytest.raises(ConfigError, match="positive"):
        split_shares(spec, [1.0, 0.0])


def test_a_straddled_kv_head_is_held_by_both_devices(smollm2_package) -> None:
    """SmolLM2: 9 query heads over 3 KV heads; 2 and 4 devices cut inside a group."""
    spec = open_package(smollm2_package).manifest.spec
    two = split_shares(spec, [1.0, 1.0])
    assert [s.heads for s in two] == [(0, 4), (4, 9)]
    assert [s.kv_heads(spec) for s in two] == [(0, 2), (1, 3)]  # KV head 1 on both
    four = split_shares(spec, [1.0] * 4)
    assert sum(b - a for a, b in (s.heads for s in four)) == 9


@pytest.mark.parametrize("count", [1, 2, 3, 4])
def test_partials_sum_to_the_block(smollm2_package, count) -> None:
    """The shares' partials, reduced, equal the numpy forward's whole block (SmolLM2 fp32,
    uneven weights), prefill then a decode step reading the cache."""
    weights = load_model_weights(open_package(smollm2_package))
    spec, block = weights.spec, weights.blocks[2]
    shares = split_shares(spec, [1.0 + 0.5 * i for i in range(count)], ffn_unit(block))
    runners = [ShardRunner(spec, [block], s, 32) for s in shares]
    keys = np.zeros((1, spec.num_kv_heads, 32, spec.head_dim), np.float32)
    values = keys.copy()
    rng = np.random.default_rng(0)
    for position, size in ((0, 5), (5, 1)):
        x = rng.standard_normal((1, size, spec.hidden_size)).astype(np.float32)
        rope = rope_tables(spec, 32)
        expected = block_forward(spec, block, x, keys, values, position, rope)[0]
        r = finish(
            spec,
            Reduction.of(block),
            "attention",
            sum(run.partial("attention", 2, x[0], position) for run in runners),
            x[0],
        )
        got = finish(
            spec,
            Reduction.of(block),
            "ffn",
            sum(run.partial("ffn", 2, r, position) for run in runners),
            r,
        )
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=2e-4)


def test_a_coordinators_request_is_checked(tiny_package) -> None:
    package = open_package(tiny_package)
    for share, blocks, match in (
        ({"heads": [0, 9], "ffn": [0, 64]}, [0, 2], "heads"),
        ({"heads": [0, 2]}, [0, 2], "ffn"),
        ({"heads": [0, 2], "ffn": [0, 64]}, [3, 9], "blocks"),
        ("all", [0, 2], "share"),
    ):
        with pytest.raises(ConfigError, match=match):
            load_share(package, share, blocks)
    runner = load_share(package, {"heads": [0, 2], "ffn": [0, 64]}, [0, 2], 16)
    x = np.zeros((1, 64), np.float32)
    with pytest.raises(ConfigError, match="skip ahead"):
        runner.partial("attention", 0, x, 3)
    with pytest.raises(ConfigError, match="not in this share"):
        runner.partial("attention", 3, x, 0)
    with pytest.raises(ConfigError, match="phase"):
        runner.partial("both", 0, x, 0)
    assert Share.from_meta(package.manifest.spec, runner.share.as_meta()) == runner.share


def test_backend_options_are_checked() -> None:
    assert parse_workers("tcp://a:1|K#1, tcp://b:2|K2")[1].public == "K2"
    assert parse_weights("", 3) == [1.0, 1.0, 1.0]
    for text in ("tcp://a:1", "|key"):
        with pytest.raises(ConfigError, match=r"ENDPOINT\|PUBLIC_KEY"):
            parse_workers(text)
    with pytest.raises(ConfigError, match="3 positive numbers"):
        parse_weights("1,2", 3)
    with pytest.raises(ConfigError, match="reduction='tree'"):
        TensorBackend({"cluster": "home", "workers": "tcp://a:1|A", "reduction": "tree"})
    backend = TensorBackend({"cluster": "home", "workers": "tcp://a:1|A,tcp://b:2|B"})
    assert backend.survivors("tcp://a:1")["workers"] == "tcp://b:2|B"
    assert (
        TensorBackend({"cluster": "home", "workers": "tcp://a:1|A"}).survivors("tcp://a:1") is None
    )


# ---- worker processes ---------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3])
def test_tensor_parallel_matches_one_device(
    tiny_package, coordinator, start_worker, monkeypatch, caplog, count
) -> None:
    """One worker, or three with a ring asked for and the last reached through an address
    only this machine can use (a relay that takes one connection): the second cannot hand
    on to it, so the reductions go by the star, said in the log; the same tokens."""
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    workers = [start_worker(coordinator) for _ in range(count)]
    via = [w.endpoint for w in workers[:-1]] + [Relay(workers[-1].endpoint).endpoint]
    reduction = "ring" if count > 1 else "auto"
    placement = _tensor(tiny_package, workers, reduction=reduction, via=via)
    with caplog.at_level(logging.WARNING, "edge.cluster.tensor"):
        split = Engine(
            open_package(tiny_package), EngineConfig(threads=1, max_context=64, placement=placement)
        )
    assert not split.fallbacks, split.fallbacks
    assert ("cannot hand a ring on" in caplog.text) == (count > 1), caplog.text
    single = Engine(open_package(tiny_package), EngineConfig(threads=1, max_context=64))
    np.testing.assert_allclose(
        split.prefill(PROMPT, all_logits=True),
        single.prefill(PROMPT, all_logits=True),
        rtol=1e-4,
        atol=1e-4,
    )
    split.reset()
    single.reset()
    assert _greedy(split, 10) == _greedy(single, 10)
    split.rewind(len(PROMPT))  # a rewind (speculative decoding's) reaches every share
    single.rewind(len(PROMPT))
    np.testing.assert_allclose(split.decode(3), single.decode(3), rtol=1e-4, atol=1e-4)
    assert f"reductions: star{' (ring asked: the ring not linked)' * (count > 1)}" in (
        split.describe()
    )
    assert " star, 0 ring)" in (split.report() or "")
    status = cluster_status(
        "home", [w.endpoint.removeprefix("tcp://") for w in workers], mdns_s=0, store=coordinator
    )
    assert all("heads [" in row.holds for row in status), status
    split.close()


@pytest.mark.parametrize(
    ("how", "reduction"),
    [(signal.SIGKILL, "auto"), (signal.SIGSTOP, "auto"), (signal.SIGKILL, "ring")],
)
def test_a_lost_worker_is_resharded_over_the_survivors(
    tiny_package, coordinator, start_worker, monkeypatch, how, reduction
) -> None:
    """kill -9 (the connection drops) or SIGSTOP (its heartbeats stop) one of three workers
    after four tokens: the two left (and this machine) take its heads and columns from their
    own package, the KV cache is rebuilt from the tokens so far, and the greedy tokens are
    still the single device's. Once the worker is back (started again, or SIGCONT), the split
    over all four devices is restored between generations, with the same tokens. In a ring
    the worker before the lost one cannot hand on to it: the loss is pinned on the lost one
    (so the survivors are the others), and the survivors form a ring of two."""
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    workers = [start_worker(coordinator) for _ in range(3)]
    placement = _tensor(tiny_package, workers, weights="1,1,1,1", reduction=reduction)
    split = Engine(
        open_package(tiny_package),
        EngineConfig(threads=1, max_context=64, placement=placement, readmit_interval_s=0),
    )
    single = Engine(open_package(tiny_package), EngineConfig(threads=1, max_context=64))
    expected = _greedy(single, 10)
    lost = workers[1].proc.pid
    assert _greedy(split, 10, kill=lambda: os.kill(lost, how)) == expected
    assert not split.fallbacks, split.fallbacks  # re-sharded, not moved to this machine's CPU

    def workers_used() -> str:
        (segment,) = [s for s in split.placements["decode"][0].segments if s.backend == "tensor"]
        return dict(segment.options)["workers"]

    assert workers[1].endpoint not in workers_used() and workers[2].endpoint in workers_used()
    if reduction == "ring":  # the survivors' ring: the rebuild, the step again and 6 more
        assert "(0 star, 64 ring)" in (split.report() or ""), split.report()  # x 2 x 4 blocks
    if how == signal.SIGKILL:
        workers[1].proc.wait(10)
        start_worker(again=workers[1])
    else:
        os.kill(lost, signal.SIGCONT)
    assert split.readmit() == ["parts [1, 5) back on tensor"]
    assert all(w.endpoint in workers_used() for w in workers)
    split.reset()
    assert _greedy(split, 10) == expected
    split.close()


def test_real_smollm2_over_four_devices(
    smollm2_package, coordinator, start_worker, monkeypatch
) -> None:
    """The real SmolLM2 (9 heads over 3 KV heads: uneven cuts inside GQA groups) on this
    process plus three workers, star reductions (what "auto" picks on loopback) then a ring
    of two (shares 2:1:1): the single device's greedy tokens each time. The ring's reductions
    are counted by the engine's report and each worker's status. (A ring of three, its middle
    worker killed, is `test_a_lost_worker_is_resharded_over_the_survivors[9-ring]`; two
    devices' cut, inside KV group 1, is checked block by block in
    `test_partials_sum_to_the_block`.)"""
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    workers = [start_worker(coordinator, package=smollm2_package) for _ in range(3)]
    single = Engine(open_package(smollm2_package), EngineConfig(threads=2, max_context=64))
    expected = _greedy(single, 8)
    blocks = open_package(smollm2_package).manifest.spec.num_layers
    # The ring decodes 4 tokens (a test's time is the suite's), the star all 8.
    for used, weights, reduction, n in (
        (3, "", "auto", 8),
        (2, "2,1,1", "ring", 4),
    ):
        placement = _tensor(smollm2_package, workers[:used], weights, 2, reduction)
        config = EngineConfig(threads=2, max_context=64, placement=placement)
        split = Engine(open_package(smollm2_package), config)
        assert not split.fallbacks, split.fallbacks
        assert _greedy(split, n) == expected[:n], (used, reduction)
        ring = 2 * blocks * (n + 1) if reduction == "ring" else 0  # the prompt and n steps
        assert f"{2 * blocks * (n + 1) - ring} star, {ring} ring)" in (split.report() or "")
        split.close()
    peers = [w.endpoint.removeprefix("tcp://") for w in workers]
    holds = [row.holds for row in cluster_status("home", peers, 0, coordinator)]
    assert "ring hands on" not in holds[0]  # unlinked when its engine closed
    assert f"{2 * blocks * 9} star, {2 * blocks * 5} ring reductions" in holds[0], holds


def test_biases_go_with_their_columns_or_to_the_reduction(tiny_package) -> None:
    """Qwen2's fused Q/K/V bias is sliced with its columns; an output bias (W_o, W_down) is
    added once, by the reduction, whatever the device count (GQA 4:2 over 3 devices)."""
    from dataclasses import replace

    from devices.spec_forward.weights import FloatWeight

    weights = load_model_weights(open_package(tiny_package))
    spec, block = weights.spec, weights.blocks[1]
    rng = np.random.default_rng(1)

    def biased(w: FloatWeight) -> FloatWeight:
        return FloatWeight(w.weight, rng.standard_normal(w.N).astype(np.float32))

    block = replace(
        block, qkv=biased(block.qkv), attn_output=biased(block.attn_output), down=biased(block.down)
    )
    x = rng.standard_normal((1, 4, spec.hidden_size)).astype(np.float32)
    keys = np.zeros((1, spec.num_kv_heads, 16, spec.head_dim), np.float32)
    expected = block_forward(spec, block, x, keys, keys.copy(), 0, rope_tables(spec, 16))[0]
    runners = [ShardRunner(spec, [block], s, 16) for s in split_shares(spec, [1.0, 1.0, 2.0])]
    r = finish(
        spec,
        Reduction.of(block),
        "attention",
        sum(u.partial("attention", 1, x[0], 0) for u in runners),
        x[0],
    )
    got = finish(
        spec, Reduction.of(block), "ffn", sum(u.partial("ffn", 1, r, 0) for u in runners), r
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_a_ring_turn_takes_only_its_own_inputs() -> None:
    """A worker's side of a ring (no processes): x is handed on before the partial is
    computed, the sum after it; hand-overs of another reduction (token) wait unused, a
    malformed one is refused, a sum of the wrong shape fails the turn, and the last worker
    answers with the sum instead of handing it on."""
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    handed: list[tuple[str, np.ndarray]] = []

    def forward(part: str, array: np.ndarray) -> bool:
        handed.append((part, array))
        return True

    def hand_over(part: str, token: int, array: np.ndarray) -> Message:
        return Message("forward", 0, {"ring": part, "token": token}, (array,))

    ring = Ring()
    middle = Message("shard", 4, {"ring": 7, "last": False, "position": 0})
    ring.begin(middle, upstream=True, downstream=True)
    ring.receive(hand_over("x", 6, x))  # another reduction's
    assert ring.turn(middle, lambda v: 2 * v, forward) is None
    ring.receive(hand_over("x", 7, x))
    assert ring.turn(middle, lambda v: 2 * v, forward) is None  # its sum is still to come
    assert [part for part, _ in handed] == ["x"]
    for bad in (hand_over("y", 7, x), hand_over("sum", 7, x.astype(np.float16))):
        with pytest.raises(ProtocolError):
            ring.receive(bad)
    ring.receive(hand_over("sum", 7, np.ones((2, 3), np.float32)))
    reply = ring.turn(middle, lambda v: 2 * v, forward)
    assert reply is not None and reply.meta == {"forwarded": True} and reply.id == 4
    np.testing.assert_array_equal(handed[-1][1], 2 * x + 1)

    last = Message("shard", 5, {"ring": 8, "last": True, "position": 0})
    ring.begin(last, upstream=True, downstream=False)
    ring.receive(hand_over("sum", 8, np.ones((1, 3), np.float32)))
    ring.receive(hand_over("x", 8, x))
    with pytest.raises(ProtocolError, match="shape"):
        ring.turn(last, lambda v: v, forward)
    ring.begin(last, upstream=True, downstream=False)
    ring.receive(hand_over("x", 8, x))
    ring.receive(hand_over("sum", 8, x))
    reply = ring.turn(last, lambda v: v, forward)
    assert reply is not None and len(handed) == 2
    np.testing.assert_array_equal(reply.buffers[0], 2 * x)
    with pytest.raises(ConfigError, match="no next worker"):
        ring.begin(middle, upstream=True, downstream=False)
    with pytest.raises(ProtocolError, match="token"):
        ring.begin(Message("shard", 6, {"ring": "7"}), upstream=True, downstream=True)
