"""Each worker's peak memory against the coordinator's plan for it, within 10%, on the real
SmolLM2-135M (fp32, 540 MB of weights; the tiny test model would measure only the interpreter):

1. a pipeline over two workers (embedding and half the blocks on one, the rest and the tied
   head on the other; this machine only tokenizes);
2. tensor parallel over this machine and two workers (a third of every block's heads and FFN
   columns each; the embedding and head here).

The coordinator plans as it does for `edge.load(cluster=...)` (`plan_cluster`, each worker's
idle RSS from its `info`), for the context the test then runs: a 32-token prompt in one step
and 4 decoded tokens in a 64-token cache. Each worker is a fresh process (VmHWM is a process's
high-water mark, from its start); after the run, its `info` reports its peak RSS (VmHWM from
/proc/self/status, its own: `ru_maxrss` would count what a forked child inherited). This
process's own peak is not checked: pytest's memory is in it.
"""

from __future__ import annotations

import pytest

from edge.cluster.client import WorkerClient
from edge.cluster.members import find_members
from edge.cluster.placement import ClusterConfig, plan_cluster
from edge.cluster.predict import Prediction
from edge.cluster.status import cluster_status
from edge.engine import Engine, EngineConfig
from edge.package import open_package
from edge.planner import PlanConfig

pytestmark = pytest.mark.timeout(240)
MAX_CONTEXT, PROMPT, DECODE = 64, 32, 4
TOLERANCE = 0.10
PLAN = PlanConfig(
    max_context=MAX_CONTEXT,
    prompt_tokens=PROMPT,
    prefill_chunk=PROMPT,
    context_tokens=PROMPT + DECODE,
)
MiB = 1 << 20


def _generate(package_path, placement) -> None:
    """The planned context: one prompt step, then greedy decode steps."""
    config = EngineConfig(
        threads=1, max_context=MAX_CONTEXT, prefill_chunk=PROMPT, placement=placement
    )
    engine = Engine(open_package(package_path), config)
    try:
        assert not engine.fallbacks, engine.fallbacks
        vocab = engine.spec.vocab_size
        token = int(engine.prefill([(7 * i + 100) % vocab for i in range(PROMPT)])[-1].argmax())
        for _ in range(DECODE):
            token = int(engine.decode(token).argmax())
    finally:
        engine.close()


def _plan_and_run(package_path, coordinator, workers, mode: str) -> list[tuple[str, int, int]]:
    """(worker, predicted peak, measured peak) per worker of a `mode` split."""
    package = open_package(package_path)
    peers = tuple(w.endpoint.removeprefix("tcp://") for w in workers)
    config = ClusterConfig(
        "home", peers, mdns_s=0, distribute="always", mode=mode, local_share=False
    )
    members, skipped = find_members(package, config)
    assert len(members) == len(workers), skipped
    plan = plan_cluster(package, config, members, bandwidth_gbs=10.0, plan=PLAN)
    assert plan.chosen is not None and plan.chosen.mode == mode, plan.why
    _generate(package_path, plan.placement)
    keys = coordinator.cluster_keys("home")
    out = []
    for member in members:
        with WorkerClient(member.endpoint, member.public, keys) as link:
            info = link.info()
        assert info["slice"] is not None and info["peak_rss"], info
        out.append((member.node_id, _predicted(plan.chosen, member.node_id), info["peak_rss"]))
    return out


def _predicted(prediction: Prediction, node_id: str) -> int:
    memory = prediction.device_memory(node_id)
    items = ", ".join(f"{k} {v / MiB:.0f}" for k, v in memory.breakdown.items())
    print(f"\n  {node_id[:12]} planned {memory.peak / MiB:.0f} MiB ({items})")
    return memory.peak


def _check(mode: str, rows: list[tuple[str, int, int]]) -> None:
    errors = []
    for node, predicted, peak in rows:
        error = (predicted - peak) / peak
        errors.append(error)
        print(
            f"{mode} {node[:12]}: predicted {predicted / MiB:.0f} MiB, "
            f"peak RSS {peak / MiB:.0f} MiB ({error:+.1%})"
        )
    assert all(abs(e) <= TOLERANCE for e in errors), [(mode, r, e) for r, e in zip(rows, errors)]


def test_worker_peak_memory_follows_the_plan(
    smollm2_package, coordinator, start_worker, monkeypatch
) -> None:
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    # The workers run one thread each (`--threads 1`): so does their BLAS. OpenBLAS's default
    # pool (a thread per core) beside the others' spins on this machine's two cores: the tensor
    # run then takes ~6x as long.
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    open_package(smollm2_package)  # verified here once, not by each worker (either is planned)

    workers = [start_worker(coordinator, package=smollm2_package) for _ in range(2)]
    pipeline = _plan_and_run(smollm2_package, coordinator, workers, "pipeline")
    for worker in workers:
        worker.stop()

    workers = [start_worker(coordinator, package=smollm2_package) for _ in range(2)]
    tensor = _plan_and_run(smollm2_package, coordinator, workers, "tensor")
    peers = [w.endpoint.removeprefix("tcp://") for w in workers]
    rows = [
        r for r in cluster_status("home", peers, mdns_s=0, store=coordinator) if r.state == "ok"
    ]
    print("\n".join(f"status {r.node_id[:12]}: {r.holds}" for r in rows))
    assert len(rows) == 2 and all("planned" in r.holds for r in rows), rows

    _check("pipeline", pipeline)
    _check("tensor", tensor)
