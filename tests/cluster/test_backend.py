"""The cluster as a placement backend: the engine runs embed + 2 blocks on ONNX Runtime here
and the rest on a worker process, with the unsplit engine's logits and greedy tokens."""

from __future__ import annotations

import numpy as np
import pytest

from devices import registry
from edge.cluster.backend import register_cluster_backend
from edge.engine import Engine, EngineConfig
from edge.errors import BackendError
from edge.package import open_package
from edge.placement import Placement

pytestmark = pytest.mark.timeout(120)
PROMPT = [1, 17, 42, 99, 5, 230, 64, 12]


def _greedy(engine: Engine, n: int) -> tuple[np.ndarray, list[int]]:
    logits = engine.prefill(PROMPT, all_logits=True)
    prompt = logits.copy()
    out = [int(logits[-1].argmax())]
    for _ in range(n - 1):
        out.append(int(engine.decode(out[-1]).argmax()))
    return prompt, out


def test_engine_with_a_cluster_segment_matches_unsplit(
    tiny_package, coordinator, start_worker, monkeypatch, request
) -> None:
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    register_cluster_backend()
    request.addfinalizer(lambda: registry.unregister("cluster"))  # other tests list backends
    worker = start_worker(coordinator)
    remote = {"endpoint": worker.endpoint, "server_key": worker.public, "cluster": "home"}
    placement = Placement.split(6, [(0, "ort_cpu"), (3, "cluster", remote)])
    config = EngineConfig(threads=1, max_context=64, placement=placement)
    split = Engine(open_package(tiny_package), config)
    assert not split.fallbacks, split.fallbacks
    single = Engine(open_package(tiny_package), EngineConfig(threads=1, max_context=64))

    prompt, tokens = _greedy(split, 8)
    prompt_ref, tokens_ref = _greedy(single, 8)
    np.testing.assert_allclose(prompt, prompt_ref, rtol=1e-4, atol=1e-4)
    assert tokens == tokens_ref
    split.rewind(len(PROMPT))  # speculative decoding's rewind reaches the worker too
    np.testing.assert_allclose(
        split.decode(tokens[0]), _after(single, tokens[0]), rtol=1e-4, atol=1e-4
    )

    worker.proc.kill()  # a lost worker is the engine's BackendError, naming the segment
    with pytest.raises(BackendError, match=r"cluster on worker .*parts \[3, 6\)"):
        split.decode(tokens[1])


def _after(engine: Engine, token: int) -> np.ndarray:
    engine.rewind(len(PROMPT))
    return engine.decode(token).copy()
