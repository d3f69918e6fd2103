"""Two workers on loopback run a tiny package as a pipeline; the logits equal one engine's,
and a worker lost (kill -9, SIGSTOP) is detected within the link's bounded time."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from edge.cluster.client import WorkerClient
from edge.cluster.errors import PeerLostError
from edge.cluster.keys import KeyStore
from edge.cluster.pipeline import Pipeline
from edge.cluster.transport import LinkConfig
from edge.engine import Engine, EngineConfig
from edge.package import open_package

pytestmark = pytest.mark.timeout(120)
PROMPT = [1, 17, 42, 99, 5, 230, 64, 12, 7, 300, 150, 33]
# Heartbeats every 0.5 s, a peer silent for 2 s is lost: detection within 2.5 s.
LINK = LinkConfig(heartbeat_interval_s=0.5, heartbeat_timeout_s=2.0, request_timeout_s=30)


def _link(coordinator: KeyStore, worker, config: LinkConfig = LINK) -> WorkerClient:
    return WorkerClient(
        worker.endpoint, worker.public, coordinator.cluster_keys("home"), config, worker.node_id
    )


def _reference(package: Path, tokens: int) -> tuple[np.ndarray, list[int], list[np.ndarray]]:
    engine = Engine(open_package(package), EngineConfig(threads=1, max_context=128))
    prompt_logits = engine.prefill(PROMPT, all_logits=True)
    out, steps = [], []
    logits = prompt_logits[-1]
    for _ in range(tokens):
        out.append(int(logits.argmax()))
        logits = engine.decode(out[-1]).copy()
        steps.append(logits)
    return prompt_logits, out, steps


def test_two_worker_pipeline_matches_one_engine(tiny_package, coordinator, start_worker) -> None:
    """Slices [0, 3) and [3, 6) of embed + 4 blocks + head: prompt logits at every position
    and each decode step's logits allclose to the single engine's; greedy tokens identical."""
    workers = [start_worker(coordinator), start_worker(coordinator)]
    links = [_link(coordinator, w) for w in workers]
    pipeline = Pipeline(links, 6, [(0, 3), (3, 6)], max_context=128, threads=1)
    prompt_logits, tokens, steps = _reference(tiny_package, 8)

    got = pipeline.feed(PROMPT, logits="all")  # [S, V]
    np.testing.assert_allclose(got, prompt_logits, rtol=1e-4, atol=1e-4)
    out = []
    logits = got[-1]
    for expected in steps:
        out.append(int(logits.argmax()))
        logits = pipeline.feed([out[-1]])[-1]
        np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)
    assert out == tokens
    # A rewind re-runs from an earlier position on every worker: the same logits again.
    pipeline.rewind(len(PROMPT))
    again = pipeline.feed([tokens[0]])[-1]
    np.testing.assert_allclose(again, steps[0], rtol=1e-4, atol=1e-4)
    info = links[1].info()
    assert info["slice"]["start"] == 3 and info["slice"]["position"] == len(PROMPT) + 1
    pipeline.close()


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_lost_worker_is_detected_in_bounded_time(coordinator, start_worker, how: str) -> None:
    """kill -9 (the connection drops) or SIGSTOP (heartbeats go unanswered) while a step is
    awaited: PeerLostError within the heartbeat timeout plus margin, not a hang."""
    worker = start_worker(coordinator)
    link = _link(coordinator, worker)
    link.load_slice(0, 6, 64, 1)
    link.step(np.array([PROMPT], np.int64), 0)
    os.kill(worker.proc.pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
    start = time.monotonic()
    with pytest.raises(PeerLostError, match=worker.node_id):
        link.step(np.array([[5]], np.int64), len(PROMPT))
    elapsed = time.monotonic() - start
    assert elapsed < LINK.detection_s + 1.5, elapsed
    with pytest.raises(PeerLostError):  # the link stays lost
        link.ping()
    link.close()


def test_pipeline_survives_a_worker_killed_mid_generation(
    tiny_package, coordinator, start_worker
) -> None:
    """kill -9 the second worker after a few tokens: the survivor loads every part from its
    own disk, the KV cache is rebuilt from the tokens so far, and the greedy tokens equal the
    single engine's."""
    _, tokens, _ = _reference(tiny_package, 10)
    workers = [start_worker(coordinator), start_worker(coordinator)]
    pipeline = Pipeline([_link(coordinator, w) for w in workers], 6, max_context=128, threads=1)
    logits = pipeline.feed(PROMPT)
    out = []
    for i in range(10):
        out.append(int(logits[-1].argmax()))
        if i == 4:
            os.kill(workers[1].proc.pid, signal.SIGKILL)
        logits = pipeline.feed([out[-1]])
    assert out == tokens
    assert len(pipeline.links) == 1 and pipeline.ranges == [(0, 6)]
    assert pipeline.events and workers[1].node_id in pipeline.events[0]
    pipeline.close()
