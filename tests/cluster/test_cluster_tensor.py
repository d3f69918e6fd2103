"""Tensor parallel: blocks sharded by heads and FFN columns over this process and worker
processes on loopback (a star allreduce per attention and per FFN), with the single-device
greedy tokens; a worker killed mid-generation is re-sharded around, on the survivors."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from devices.spec_forward.numpy_forward import block_forward, rope_tables
from devices.spec_forward.weights import load_model_weights
from edge.cluster.shard_runner import Reduction, ShardRunner, finish, load_share
from edge.cluster.shards import Share, ffn_unit, split_shares
from edge.cluster.status import cluster_status
from edge.cluster.tensor_backend import TensorBackend, parse_weights, parse_workers
from edge.engine import Engine, EngineConfig
from edge.errors import ConfigError
from edge.package import open_package
from edge.placement import Placement

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


def _tensor(package, workers, weights: str = "", threads: int = 1) -> Placement:
    count = len(open_package(package).manifest.parts)
    options = {
        "cluster": "home",
        "workers": ",".join(f"{w.endpoint}|{w.public}" for w in workers),
        "weights": weights,
        "threads": threads,
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
    backend = TensorBackend({"cluster": "home", "workers": "tcp://a:1|A,tcp://b:2|B"})
    assert backend.survivors("tcp://a:1")["workers"] == "tcp://b:2|B"
    assert (
        TensorBackend({"cluster": "home", "workers": "tcp://a:1|A"}).survivors("tcp://a:1") is None
    )


# ---- worker processes ---------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3])
def test_tensor_parallel_matches_one_device(
    tiny_package, coordinator, start_worker, monkeypatch, count
) -> None:
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    workers = [start_worker(coordinator) for _ in range(count)]
    placement = _tensor(tiny_package, workers)
    split = Engine(
        open_package(tiny_package), EngineConfig(threads=1, max_context=64, placement=placement)
    )
    assert not split.fallbacks, split.fallbacks
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
    assert "shares (this machine first)" in split.describe()
    assert "reductions" in (split.report() or "")
    status = cluster_status(
        "home", [w.endpoint.removeprefix("tcp://") for w in workers], mdns_s=0, store=coordinator
    )
    assert all("heads [" in row.holds for row in status), status
    split.close()


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGSTOP])
def test_a_lost_worker_is_resharded_over_the_survivors(
    tiny_package, coordinator, start_worker, monkeypatch, how
) -> None:
    """kill -9 (the connection drops) or SIGSTOP (its heartbeats stop) one of three workers
    after four tokens: the two left (and this machine) take its heads and columns from their
    own package, the KV cache is rebuilt from the tokens so far, and the greedy tokens are
    still the single device's. Once the worker is back (started again, or SIGCONT), the split
    over all four devices is restored between generations, with the same tokens."""
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    workers = [start_worker(coordinator) for _ in range(3)]
    placement = _tensor(tiny_package, workers, weights="1,1,1,1")
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
    process plus three workers: the single device's greedy tokens. (Two devices' cut, inside
    KV group 1, is checked block by block in `test_partials_sum_to_the_block`.)"""
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    workers = [start_worker(coordinator, package=smollm2_package) for _ in range(3)]
    single = Engine(open_package(smollm2_package), EngineConfig(threads=2, max_context=64))
    expected = _greedy(single, 8)
    placement = _tensor(smollm2_package, workers, threads=2)
    split = Engine(
        open_package(smollm2_package), EngineConfig(threads=2, max_context=64, placement=placement)
    )
    assert not split.fallbacks, split.fallbacks
    assert _greedy(split, 8) == expected
    split.close()


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
