"""The cluster as a placement backend: the engine runs parts on worker processes (a share here
on ONNX Runtime, or none), with the unsplit engine's logits and greedy tokens, goes on with
the same tokens when a worker is killed mid-generation, and runs on it again once it is back."""

from __future__ import annotations

import numpy as np
import pytest

from edge.engine import Engine, EngineConfig
from edge.model import Model
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
    tiny_package, coordinator, start_worker, monkeypatch
) -> None:
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
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

    worker.proc.kill()  # the engine re-places the lost share here and goes on
    np.testing.assert_allclose(
        split.decode(tokens[1]), single.decode(tokens[1]), rtol=1e-4, atol=1e-4
    )
    (fallback,) = split.fallbacks
    assert (fallback.start, fallback.end, fallback.backend) == (3, 6, "cluster")
    assert "was lost" in fallback.reason
    split.close()


def test_two_workers_run_the_whole_model_and_survive_a_kill(
    tiny_package, coordinator, start_worker, monkeypatch
) -> None:
    """Token ids to logits entirely on two workers (slices [0, 3) and [3, 6)); kill -9 the
    second after five tokens: the greedy tokens are still the single engine's."""
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    workers = [start_worker(coordinator), start_worker(coordinator)]
    remote = [{"endpoint": w.endpoint, "server_key": w.public, "cluster": "home"} for w in workers]
    placement = Placement.split(6, [(0, "cluster", remote[0]), (3, "cluster", remote[1])])
    engine = Engine(
        open_package(tiny_package), EngineConfig(threads=1, max_context=64, placement=placement)
    )
    single = Engine(open_package(tiny_package), EngineConfig(threads=1, max_context=64))
    _, expected = _greedy(single, 10)
    logits = engine.prefill(PROMPT)[0]
    out = []
    for i in range(10):
        out.append(int(logits.argmax()))
        if i == 4:
            workers[1].proc.kill()
        logits = engine.decode(out[-1])
    assert out == expected
    assert [(f.start, f.end) for f in engine.fallbacks] == [(3, 6)]
    engine.close()


def test_a_worker_that_comes_back_is_readmitted(
    tiny_package, coordinator, start_worker, monkeypatch
) -> None:
    """kill -9 the worker holding parts [3, 6) mid-generation: the text goes on here. The next
    generation, with the worker still gone, runs here too; once it is started again (same keys,
    same port), the generation after runs on it again. Every text is the single device's."""
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    worker = start_worker(coordinator)
    remote = {"endpoint": worker.endpoint, "server_key": worker.public, "cluster": "home"}
    placement = Placement.split(6, [(0, "ort_cpu"), (3, "cluster", remote)])
    split = Model(
        open_package(tiny_package),
        EngineConfig(threads=1, max_context=64, placement=placement, readmit_interval_s=0),
        progress=False,
    )
    single = Model(open_package(tiny_package), EngineConfig(threads=1, max_context=64))
    settings = {"max_tokens": 10, "ignore_eos": True}
    expected = [r.token for r in single.stream(PROMPT, **settings)]

    def on_worker() -> bool:
        return [type(s).__name__ for s in split.engine.loaded_segments()][-1] == "ClusterLoaded"

    tokens = []
    for response in split.stream(PROMPT, **settings):
        tokens.append(response.token)
        if len(tokens) == 4:
            worker.proc.kill()
            worker.proc.wait(10)
    assert tokens == expected and not on_worker()
    assert [(f.start, f.end, f.backend) for f in split.engine.fallbacks] == [(3, 6, "cluster")]

    assert [r.token for r in split.stream(PROMPT, **settings)] == expected  # still gone
    assert not on_worker() and split.engine.fallbacks

    start_worker(again=worker)
    assert [r.token for r in split.stream(PROMPT, **settings)] == expected
    assert on_worker() and split.engine.fallbacks == []
    split.engine.close()


def _after(engine: Engine, token: int) -> np.ndarray:
    engine.rewind(len(PROMPT))
    return engine.decode(token).copy()


def test_a_lost_range_too_large_for_the_memory_here_streams(
    tiny_package, coordinator, start_worker, monkeypatch
) -> None:
    """A cluster runs models no one device holds, so a lost worker's range may not fit here:
    with the memory available reported as 64 KiB (below the range's weights), the range is
    re-placed on the `streamed` backend (read from this machine's package through a window)
    instead of resident, and the greedy tokens are still the single device's."""
    from dataclasses import replace

    from devices import memory_info

    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    worker = start_worker(coordinator)
    remote = {"endpoint": worker.endpoint, "server_key": worker.public, "cluster": "home"}
    placement = Placement.split(6, [(0, "ort_cpu"), (3, "cluster", remote)])
    split = Engine(
        open_package(tiny_package), EngineConfig(threads=1, max_context=64, placement=placement)
    )
    single = Engine(open_package(tiny_package), EngineConfig(threads=1, max_context=64))
    _, expected = _greedy(single, 10)

    real = memory_info.read_memory
    monkeypatch.setattr(
        memory_info, "read_memory", lambda *a, **k: replace(real(*a, **k), available=1 << 16)
    )
    logits = split.prefill(PROMPT)[0]
    out = []
    for i in range(10):
        out.append(int(logits.argmax()))
        if i == 4:
            worker.proc.kill()
        logits = split.decode(out[-1])
    assert out == expected
    (fallback,) = split.fallbacks
    assert (fallback.start, fallback.end, fallback.used) == (3, 6, "streamed"), fallback
    split.close()
