"""A minimal coordinator: a model's parts as a chain of worker slices (pipeline parallel).

Each worker holds a contiguous range of parts; a step runs token ids through the first slice
and hands the hidden states [1, S, H] to the next, the last returning logits. When a worker is
lost (`PeerLostError`), the parts are re-divided over the survivors, which load their new
slices from their own disks, and the KV cache is rebuilt by running the tokens so far again:
the caller's step returns as if nothing happened. This is the seed of the cluster `Backend`
(a remote segment of the placement engine), not a second engine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import pairwise

import numpy as np

from edge.cluster.client import WorkerClient
from edge.cluster.errors import ClusterError, PeerLostError

log = logging.getLogger("edge.cluster.pipeline")


def even_ranges(num_parts: int, count: int) -> list[tuple[int, int]]:
    """`count` contiguous ranges covering [0, num_parts), sizes differing by at most one."""
    if not 1 <= count <= num_parts:
        raise ClusterError(f"cannot split {num_parts} parts over {count} workers")
    bounds = [round(i * num_parts / count) for i in range(count + 1)]
    return list(pairwise(bounds))


class Pipeline:
    """Slices [start, end) on `links`, in order; `ranges` default to an even split."""

    def __init__(
        self,
        links: Sequence[WorkerClient],
        num_parts: int,
        ranges: Sequence[tuple[int, int]] | None = None,
        *,
        max_context: int | None = None,
        threads: int | None = None,
        chunk: int = 256,
    ) -> None:
        self.links = list(links)
        self.num_parts, self.max_context, self.threads = num_parts, max_context, threads
        self.chunk = chunk
        self.tokens: list[int] = []  # what the workers' caches hold, to rebuild them
        self.events: list[str] = []  # workers lost and re-plans, in words
        self._place(list(ranges) if ranges else even_ranges(num_parts, len(self.links)))

    def _place(self, ranges: list[tuple[int, int]]) -> None:
        if ranges[0][0] != 0 or ranges[-1][1] != self.num_parts or len(ranges) != len(self.links):
            raise ClusterError(f"slices {ranges} must cover [0, {self.num_parts}) once per link")
        for link, (start, end) in zip(self.links, ranges):
            link.load_slice(start, end, self.max_context, self.threads)
        self.ranges = ranges

    @property
    def position(self) -> int:
        return len(self.tokens)

    def feed(self, ids: Sequence[int] | np.ndarray, logits: str = "last") -> np.ndarray:
        """Run token ids after those already fed; logits [K, V] of the last chunk (K = 1 for
        "last"). Survives lost workers while at least one is left."""
        pending = np.asarray(ids, np.int64).reshape(-1)
        while True:
            try:
                return self._feed(pending, logits)
            except PeerLostError as exc:
                self._replan(exc)
                pending = np.concatenate([np.asarray(self.tokens, np.int64), pending])
                self.tokens = []

    def _feed(self, ids: np.ndarray, logits: str) -> np.ndarray:
        out = None
        for start in range(0, len(ids), self.chunk):
            chunk = ids[start : start + self.chunk]
            x: np.ndarray = chunk.reshape(1, -1)  # int64 [1, S], then hidden [1, S, H]
            for link in self.links:
                x = link.step(x, self.position, logits)
            self.tokens.extend(int(t) for t in chunk)
            out = x[0]  # logits [K, V]
        assert out is not None
        return np.array(out)  # a copy: the received frame is reused

    def rewind(self, position: int) -> None:
        """Forget tokens from `position` on (the next step tells the workers)."""
        if not 0 <= position <= self.position:
            raise ClusterError(f"cannot rewind to {position}; {self.position} tokens fed")
        del self.tokens[position:]

    def greedy(self, prompt: Sequence[int], max_tokens: int) -> list[int]:
        logits = self.feed(prompt)
        out: list[int] = []
        while len(out) < max_tokens:
            out.append(int(np.argmax(logits[-1])))
            if len(out) < max_tokens:
                logits = self.feed([out[-1]])
        return out

    def _replan(self, exc: PeerLostError) -> None:
        lost = [link for link in self.links if link.lost]
        survivors = []
        for link in self.links:
            if link.lost:
                continue
            try:
                link.ping()
                survivors.append(link)
            except PeerLostError:
                lost.append(link)
        if not survivors:
            raise ClusterError(f"every worker is lost; the last: {exc}") from exc
        for link in lost:
            link.close()
        self.links = survivors
        ranges = even_ranges(self.num_parts, len(survivors))
        self.events.append(
            f"lost {', '.join(link.name for link in lost)}; re-planned over "
            f"{len(survivors)} worker(s): {ranges}; rebuilding {len(self.tokens)} tokens"
        )
        log.warning("%s", self.events[-1])
        self._place(ranges)

    def close(self) -> None:
        for link in self.links:
            link.close()
