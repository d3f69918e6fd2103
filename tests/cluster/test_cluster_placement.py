"""The coordinator's split: parts cut by memory over this machine and the workers found, used
by `edge.load(cluster=...)` and `edge run --cluster`, and not distributed when the model fits
here (a pipeline of one request is never faster than one device holding it all)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import edge
from edge.cluster.placement import ClusterConfig, cluster_placement
from edge.cluster.predict import LinkTimes, choose_reduction, reduction_s, split_by_memory
from edge.errors import ConfigError
from edge.package import open_package

pytestmark = pytest.mark.timeout(120)
PROMPT = "one two three"
REPO = Path(__file__).resolve().parents[2]
CLI = (sys.executable, "-m", "edge.cli.main", "run")


def test_split_by_memory_is_contiguous_proportional_and_never_empty() -> None:
    assert split_by_memory([1] * 6, [1, 1]) == [(0, 3), (3, 6)]
    assert split_by_memory([1] * 8, [3, 1]) == [(0, 6), (6, 8)]
    assert split_by_memory([1] * 3, [1, 1000, 1]) == [(0, 1), (1, 2), (2, 3)]
    assert split_by_memory([10, 1, 1, 1, 10], [1, 1]) == [(0, 3), (3, 5)]
    with pytest.raises(ConfigError):
        split_by_memory([1, 1], [1, 1, 1])


def _peer(worker) -> str:
    return worker.endpoint.removeprefix("tcp://")


def test_load_over_a_cluster_gives_the_single_device_text(
    tiny_package, coordinator, start_worker, monkeypatch
) -> None:
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    workers = [start_worker(coordinator), start_worker(coordinator)]
    peers = tuple(_peer(w) for w in workers)
    package = open_package(tiny_package)
    placement, why = cluster_placement(package, ClusterConfig("home", peers, mdns_s=0))
    assert placement is None and "not distributed" in why

    config = ClusterConfig("home", peers, mdns_s=0, distribute="always")
    placement, why = cluster_placement(package, config)
    assert placement is not None, why
    assert [s.backend for s in placement.segments] == ["ort_cpu", "cluster", "cluster", "ort_cpu"]
    assert placement.segments[-1].start == len(package.manifest.parts) - 1  # the head, here
    assert placement.end == len(package.manifest.parts)

    single = edge.load(tiny_package, threads=1, progress=False)
    expected = single.generate(PROMPT, max_tokens=8, ignore_eos=True)
    model = edge.load(tiny_package, threads=1, progress=False, cluster=config)
    assert [s.backend.name for s in model.engine.segments][1:3] == ["cluster", "cluster"]
    assert model.generate(PROMPT, max_tokens=8, ignore_eos=True) == expected
    model.engine.close()


def test_run_cli_over_a_cluster(tiny_package, coordinator, start_worker) -> None:
    """`edge run PKG --cluster home --peer HOST:PORT --distribute always [--split tensor]`
    prints the single-device text and the placement (on stderr)."""
    worker = start_worker(coordinator)
    env = {"EDGE_CONFIG_DIR": str(coordinator.root.parent), "PYTHONPATH": str(REPO)}

    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [*CLI, str(tiny_package), PROMPT, "-n", "6", "-t", "1", "-q", *extra],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
            env={**os.environ, **env},
        )

    alone = run()
    spread = run("--cluster", "home", "--peer", _peer(worker), "--distribute", "always")
    assert alone.returncode == 0 and spread.returncode == 0, spread.stderr[-2000:]
    assert spread.stdout == alone.stdout
    assert "cluster" in spread.stderr
    peer = ("--cluster", "home", "--peer", _peer(worker), "--distribute", "always")
    tensor = run(*peer, "--split", "tensor")
    assert tensor.returncode == 0, tensor.stderr[-2000:]
    assert tensor.stdout == alone.stdout
    assert "tensor" in tensor.stderr


def _members(count: int, rtt_s: float) -> list:
    from edge.cluster.members import Member

    return [
        Member(f"node{i}", f"tcp://127.0.0.1:{5000 + i}", f"KEY{i}", 1 << 34, rtt_s)
        for i in range(count)
    ]


def test_the_split_is_chosen_by_predicted_time_per_token(tiny_package) -> None:
    """No worker is contacted: members with measured round trips and a bandwidth are given.
    Slow devices on a fast link: tensor parallel beats one device; the same on a slow link:
    a pipeline (one round trip per worker, not two per block); fast devices: one device."""
    package = open_package(tiny_package)
    blocks = sum(p.kind == "block" for p in package.manifest.parts)
    slow = 1e-5  # GB/s: compute dominates

    placement, why = cluster_placement(
        package, ClusterConfig("home"), _members(3, 1e-6), bandwidth_gbs=slow
    )
    assert placement is not None and why.startswith("tensor"), why
    (tensor,) = [s for s in placement.segments if s.backend == "tensor"]
    assert tensor.end - tensor.start == blocks
    assert dict(tensor.options)["workers"].count("|") == 3

    placement, why = cluster_placement(
        package, ClusterConfig("home", distribute="always"), _members(3, 0.5), bandwidth_gbs=0.1
    )
    assert placement is not None and why.startswith("pipeline"), why

    placement, why = cluster_placement(
        package, ClusterConfig("home"), _members(3, 1e-3), bandwidth_gbs=20.0
    )
    assert placement is None and "one device is predicted fastest" in why, why
    assert "tensor" in why and "pipeline" in why  # every prediction is shown

    placement, why = cluster_placement(
        package,
        ClusterConfig("home", distribute="always", mode="tensor"),
        _members(2, 1e-3),
        bandwidth_gbs=20.0,
    )
    assert placement is not None and why.startswith("tensor"), why
    with pytest.raises(ConfigError, match="mode"):
        ClusterConfig("home", mode="ring")


def test_the_plan_predicts_each_devices_peak_memory(tiny_package) -> None:
    """No worker is contacted. Each mode's prediction holds every device's predicted peak (a
    worker's over the idle RSS it reported), growing with the context held; a worker with
    room for its weights but not for the runtime and the load transient is not used.
    (tests/cluster/test_cluster_memory.py checks the numbers against real workers.)"""
    from dataclasses import replace

    from edge.cluster.placement import plan_cluster
    from edge.cluster.predict import HERE
    from edge.planner import PlanConfig

    package = open_package(tiny_package)
    members = [
        replace(m, idle_rss=100 << 20, runtimes=("ort_cpu", "tensor")) for m in _members(2, 1e-6)
    ]
    config = ClusterConfig("home", distribute="always", local_share=False)
    short = PlanConfig(max_context=64, context_tokens=8)
    plans = {
        tokens: plan_cluster(package, config, members, 10.0, plan)
        for tokens, plan in ((8, short), (512, None))
    }
    for mode in ("pipeline", "tensor"):
        prediction = plans[512].prediction(mode)
        assert [m.name for m in prediction.memory] == [HERE, "node0", "node1"], mode
        node = prediction.device_memory("node0")
        assert node.breakdown.process == 100 << 20
        assert node.breakdown.weights > 0 and node.peak > node.breakdown.steady
        fewer = plans[8].prediction(mode).device_memory("node0").breakdown.kv_cache
        assert 0 < fewer < node.breakdown.kv_cache, mode
    assert "peak MiB: this machine" in plans[512].why

    weights = sum(t.nbytes for p in package.manifest.parts for t in p.tensors)
    assert weights < 1 << 20  # each range fits 70% of 4 MiB; ONNX Runtime's own 14 MiB do not
    small = [replace(m, memory=4 << 20) for m in members]
    plan = plan_cluster(package, replace(config, mode="pipeline"), small, 10.0)
    assert plan.placement is None and "fits the devices' memory" in plan.why, plan.why
    assert not plan.prediction("pipeline").device_memory("node1").fits


def test_auto_leaves_out_the_workers_that_slow_the_split(tiny_package) -> None:
    """No worker is contacted. A tensor split waits on its slowest link: with one worker behind
    a 50 ms round trip and one whose link carries 1 kB/s, auto shards over the near, fast one
    and names the two it left out; `distribute="always"` uses every worker. A pipeline adds a
    hop per worker and computes one device at a time: auto takes the fewest that hold it."""
    from dataclasses import replace

    package = open_package(tiny_package)
    members = _members(3, 1e-6)
    members[1] = replace(members[1], link_bps=1e3)
    members[2] = replace(members[2], rtt_s=0.05)
    slow = 1e-3  # GB/s: compute (~1 s a token alone) is worth sharing over a fast link

    def workers(config: ClusterConfig) -> tuple[str, str]:
        placement, why = cluster_placement(package, config, members, bandwidth_gbs=slow)
        assert placement is not None, why
        (tensor,) = [s for s in placement.segments if s.backend == "tensor"]
        return dict(tensor.options)["workers"], why

    used, why = workers(ClusterConfig("home", mode="tensor"))
    assert used.count("|") == 1 and members[0].endpoint in used, why
    assert "not used: node1, node2" in why
    used, _ = workers(ClusterConfig("home", mode="tensor", distribute="always"))
    assert used.count("|") == 3

    config = ClusterConfig("home", mode="pipeline", distribute="always", local_share=False)
    everyone, _ = cluster_placement(package, config, _members(3, 1e-3), bandwidth_gbs=slow)
    assert sum(s.backend == "cluster" for s in everyone.segments) == 3
    from edge.cluster.placement import plan_cluster

    auto = plan_cluster(package, replace(config, distribute="auto"), _members(3, 1e-3), slow)
    assert len(auto.prediction("pipeline").workers) == 1, auto.why


def test_a_reduction_is_chosen_by_step_size_and_links() -> None:
    """The star costs the slowest round trip, the copies out one after another and the last
    partial back; the ring N + 1 one-way trips of S H floats each. SmolLM2 (H = 576) over two
    or three workers: on equal links, whatever their speed, the star; with this machine on
    100 Mbit/s at 10 ms and the workers linked to each other at 1 Gbit/s and 1 ms, a decoded
    token still by the star, a 256-token prompt by the ring; never when the links are too fast
    to measure or for one worker; a worker-to-worker trip not measured is taken as the slower
    of the two workers' trips from here."""
    token = 4 * 576
    for n in (2, 3):
        for bps in (12.5e6, 125e6, None):
            assert choose_reduction([LinkTimes(0.010, bps)] * n, 256 * token) == "star"
        slow_here = [LinkTimes(0.010, 12.5e6)] * n
        lan = [LinkTimes(0.001, 125e6)] * (n - 1)
        assert choose_reduction(slow_here, token, lan) == "star"
        assert choose_reduction(slow_here, 256 * token, lan) == "ring"
    times = reduction_s([LinkTimes(0.002, 1e6)] * 3, 1000)
    assert times == pytest.approx({"star": 0.002 + 4e-3, "ring": 4 * (0.001 + 1e-3)})
    times = reduction_s([LinkTimes(0.002, 1e6)] * 2, 1000, [LinkTimes(0.0, None)])
    assert times["ring"] == pytest.approx(2 * (0.001 + 1e-3))
    assert choose_reduction([LinkTimes(0.010, 1e6)], 1 << 20) == "star"
