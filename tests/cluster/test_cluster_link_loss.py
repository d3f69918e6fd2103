"""A worker lost (kill -9, SIGSTOP) is detected within the link's bounded time (the engine's
pipeline over workers and its recovery: test_backend.py)."""

from __future__ import annotations

import os
import signal
import time

import numpy as np
import pytest

from edge.cluster.client import WorkerClient
from edge.cluster.errors import PeerLostError
from edge.cluster.keys import KeyStore
from edge.cluster.transport import LinkConfig

pytestmark = pytest.mark.timeout(120)
PROMPT = [1, 17, 42, 99, 5, 230, 64, 12, 7, 300, 150, 33]
# Heartbeats every 0.5 s, a peer silent for 2 s is lost: detection within 2.5 s.
LINK = LinkConfig(heartbeat_interval_s=0.5, heartbeat_timeout_s=2.0, request_timeout_s=30)


def _link(coordinator: KeyStore, worker, config: LinkConfig = LINK) -> WorkerClient:
    return WorkerClient(
        worker.endpoint, worker.public, coordinator.cluster_keys("home"), config, worker.node_id
    )


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
