"""Blocks sharded over this machine and paired workers (tensor parallel, TPI-LLM's split) as a
placement `Backend`.

Every block of the segment is split by heads and FFN columns (`edge.cluster.shards`); this
machine computes its own share, sums the partials (plus the bias and sandwich norm the shares
leave out) and adds the residual, once for attention and once for the FFN. The workers'
partials come by one of two reductions (option `reduction`):

- "star": this machine sends the hidden states to every worker and takes every partial back:
  one round trip to the slowest worker, 2 N S H floats through this machine's link;
- "ring": it sends them to the first worker only, which hands them on worker to worker, each
  adding its partial to the running sum, and the last sends the sum back (`edge.cluster.ring`):
  N + 1 one-way trips, at most 2 S H floats on any link;
- "auto" (the default): per step of S tokens, the one `edge.cluster.predict.reduction_s`
  predicts faster from each link's round trip and bandwidth, measured at load (this machine's
  to each worker, each worker's to the next): the star for a decoded token, and on equal
  links always; the ring for long prompts where this machine's link is the slow one.

So a decoded token costs 2 x blocks round trips to the slowest worker, and each device reads
only its share of the weights: it wins where the devices' compute outweighs the link latency
(see BENCHMARKS.md, "Cluster tensor parallel"). Workers that cannot reach each other (the
ring links fail) reduce over the star, said in the log.

`edge.backends` finds it by name:
`Placement.split(n, [(0, "ort_cpu"), (1, "tensor", {"cluster": "home", "workers":
"tcp://10.0.0.7:5710|<key>,tcp://10.0.0.8:5710|<key>", "weights": "2,1,1", "reduction": "auto"}),
(n - 1, "ort_cpu")])`. `weights` sizes the shares, this machine first. A lost worker raises
`PeerLostError` inside `run`; `survivors` then names the same split without it, so the engine
re-shards over the devices left (they read the missing slices from their own disks) and
rebuilds the KV cache from the tokens so far.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from devices.backend import (
    Backend,
    Executable,
    Loaded,
    PackageSource,
    Resident,
    SegmentGraph,
    Support,
    spec_interface,
)
from devices.backends.numpy_reference import spec_support
from edge.cluster.predict import LinkTimes, choose_reduction
from edge.errors import ConfigError
from edge.format import PartEntry

log = logging.getLogger("edge.cluster.tensor")
REDUCTIONS = ("star", "ring", "auto")


@dataclass(frozen=True)
class WorkerRef:
    endpoint: str
    public: str

    def option(self) -> str:
        return f"{self.endpoint}|{self.public}"


def parse_workers(text: str) -> list[WorkerRef]:
    """`endpoint|key,endpoint|key` -> the workers, in order."""
    refs = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        endpoint, sep, public = item.partition("|")
        if not sep or not endpoint or not public:
            raise ConfigError(f"tensor worker {item!r:.60}: expected ENDPOINT|PUBLIC_KEY")
        refs.append(WorkerRef(endpoint, public))
    return refs


def parse_weights(text: str, count: int) -> list[float]:
    """`"2,1,1"` -> share weights for this machine and `count - 1` workers (default equal)."""
    if not text:
        return [1.0] * count
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"tensor weights {text!r:.60}: comma-separated numbers") from None
    if len(weights) != count or not all(w > 0 for w in weights):
        raise ConfigError(
            f"tensor weights {text!r:.60}: {count} positive numbers (this machine first)"
        )
    return weights


@dataclass
class LinkStats:
    """Reductions run (`ring` of them over the ring), the time spent waiting for the workers'
    sum beyond this machine's own partial, and the bytes through this machine's links."""

    reductions: int = 0
    wait_s: float = 0.0
    bytes_sent: int = 0
    ring: int = 0


@dataclass(eq=False)
class TensorLoaded(Loaded):
    links: list[Any]  # WorkerClient, one per worker
    local: Any  # ShardRunner: this machine's share (and each block's `Reduction`)
    shares: list[Any]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    stats: LinkStats = field(default_factory=LinkStats)
    # "star", "ring" or "auto" (then `timings`: each worker link's measured numbers, `hops`:
    # each worker's link to the next, and `ways`: the reduction chosen per step size); the
    # ring only once its workers are linked.
    reduction: str = "star"
    timings: list[LinkTimes] = field(default_factory=list)
    hops: list[LinkTimes] = field(default_factory=list)
    ways: dict[int, str] = field(default_factory=dict)
    token: int = field(default_factory=lambda: secrets.randbits(48))  # names a ring reduction


class TensorBackend(Backend):
    """Blocks [start, end) sharded over this machine and `workers` (see module docstring)."""

    name: ClassVar[str] = "tensor"
    reads_graphs: ClassVar[bool] = False  # shares are computed from the spec's weights
    recovers: ClassVar[bool] = True
    owns_cache: ClassVar[bool] = True  # each share's KV cache is held where it computes
    OPTIONS: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "cluster": str,
        "workers": str,
        "weights": str,
        "threads": int,
        "worker_threads": int,
        "reduction": str,
    }

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)  # type: ignore[arg-type]
        for required in ("cluster", "workers"):
            if required not in self.options:
                raise ConfigError(f"backend 'tensor' needs the option {required!r}")
        self.workers = parse_workers(str(self.options["workers"]))
        if not self.workers:
            raise ConfigError("backend 'tensor' needs at least one worker")
        self.weights = parse_weights(str(self.options.get("weights", "")), len(self.workers) + 1)
        self.reduction = str(self.options.get("reduction", "auto"))
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"tensor reduction={self.reduction!r}; one of {REDUCTIONS}")

    @property
    def device(self) -> str:
        return f"this machine and {len(self.workers)} worker(s), tensor parallel"

    def supports(self, part: PartEntry, package: PackageSource) -> Support:
        if part.kind != "block":
            return Support(False, f"{part.name}: only blocks are sharded (embed and head stay)")
        return spec_support(part, package, "a tensor-parallel share")

    def is_available(self) -> Support:
        from edge.cluster.backend import cluster_available

        return cluster_available(str(self.options["cluster"]))

    def reachable(self) -> bool:
        from edge.cluster.client import answers

        cluster = str(self.options["cluster"])
        return all(answers(ref.endpoint, ref.public, cluster) for ref in self.workers)

    def compile(self, graph: SegmentGraph) -> Executable:
        inputs, outputs = spec_interface(graph.parts)
        return Executable(self.name, graph, inputs, outputs)

    def load(self, executable: Executable, resident: Resident) -> TensorLoaded:
        from edge.cluster.client import WorkerClient
        from edge.cluster.keys import KeyStore
        from edge.cluster.shard_runner import ShardRunner, block_weights
        from edge.cluster.shards import ffn_unit, split_shares

        graph = executable.graph
        package, spec = graph.package, graph.package.manifest.spec
        first = graph.parts[0].block_index
        span = (first, first + len(graph.parts))
        unit = ffn_unit(next(block_weights(package, first, first + 1)))
        shares = split_shares(spec, self.weights, unit)
        context = int(resident.cos.shape[0])
        keys = KeyStore().cluster_keys(str(self.options["cluster"]))
        threads = self.options.get("worker_threads")
        links: list[Any] = []
        try:
            for ref in self.workers:
                links.append(WorkerClient(ref.endpoint, ref.public, keys))
            pending = [
                link.submit_load_shard(
                    share.as_meta(), span, context, None if threads is None else int(threads)
                )
                for link, share in zip(links, shares[1:])
            ]
            local_threads = self.options.get("threads")
            local = ShardRunner(
                spec,
                block_weights(package, *span),
                shares[0],
                context,
                None if local_threads is None else int(local_threads),
            )
            for link, ident in zip(links, pending):
                link.collect(ident, "load_shard", timeout_s=120.0)
            loaded = TensorLoaded(executable, links, local, shares)
            self._choose_ring(loaded, context * 4 * spec.hidden_size)
        except BaseException:
            for link in links:
                link.close()
            raise
        return loaded

    def _choose_ring(self, loaded: TensorLoaded, most_bytes: int) -> None:
        """Link the workers into a ring where it may run: asked for ("ring"), or for "auto"
        where some step of up to `most_bytes` of hidden states is predicted faster over it
        (each link measured now: this machine's to each worker, each worker's to the next).
        Workers that cannot reach each other: the star, said in the log."""
        from edge.cluster.errors import ClusterError

        if self.reduction == "star" or len(loaded.links) < 2:
            return
        auto = self.reduction == "auto"
        try:
            loaded.hops = _link_ring(loaded.links, self.workers, measure=auto)
        except ClusterError as exc:
            log.warning("the tensor workers cannot hand a ring on (%s); star reductions", exc)
            _unlink_ring(loaded.links)
            return
        if auto:
            loaded.timings = [_measure(link) for link in loaded.links]
            sizes = [most_bytes >> k for k in range(most_bytes.bit_length())]
            if all(_choose(loaded, n) == "star" for n in sizes):
                _unlink_ring(loaded.links)
                return
        loaded.reduction = self.reduction

    def bind(
        self, loaded: Loaded, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        assert isinstance(loaded, TensorLoaded)
        loaded.inputs.update(inputs)
        loaded.outputs.update(outputs)

    def run(self, loaded: Loaded, position: int, size: int) -> None:
        from edge.cluster.shard_runner import finish

        assert isinstance(loaded, TensorLoaded)
        spec = loaded.executable.graph.package.manifest.spec
        source = next(v for k, v in loaded.inputs.items() if k.startswith("hidden."))
        target = next(v for k, v in loaded.outputs.items() if k.startswith("hidden."))
        x = np.ascontiguousarray(source[0, :size], np.float32)
        reduce = _ring if _way(loaded, x.nbytes) == "ring" else _star
        for layer, reduction in loaded.local.reductions.items():
            for phase in ("attention", "ffn"):
                total = reduce(loaded, layer, phase, x, position)
                x = finish(spec, reduction, phase, total, x)
        target[0, :size] = x

    def unload(self, loaded: Loaded) -> None:
        assert isinstance(loaded, TensorLoaded)
        loaded.inputs.clear()
        loaded.outputs.clear()
        if loaded.reduction != "star":
            _unlink_ring(loaded.links)
        for link in loaded.links:
            link.close()

    def summary(self, loaded: Loaded) -> str | None:
        assert isinstance(loaded, TensorLoaded)
        spans = ", ".join(
            f"heads {s.heads[0]}-{s.heads[1] - 1} ffn {s.ffn[0]}-{s.ffn[1] - 1}"
            for s in loaded.shares
        )
        way = {"star": "star", "ring": "ring", "auto": "star or ring by step size (auto)"}
        said = way[loaded.reduction]
        if loaded.reduction != self.reduction:
            why = "no faster on these links" if loaded.timings else "not linked"
            said += f" ({self.reduction} asked: the ring {why})"
        return f"shares (this machine first): {spans}; reductions: {said}"

    def report(self, loaded: Loaded) -> str | None:
        assert isinstance(loaded, TensorLoaded)
        s = loaded.stats
        if not s.reductions:
            return None
        return (
            f"tensor parallel: {s.reductions} reductions ({s.reductions - s.ring} star, "
            f"{s.ring} ring), {1e3 * s.wait_s / s.reductions:.2f} ms waiting per reduction "
            f"beyond this machine's share, {s.bytes_sent >> 10} KiB through this machine's links"
        )

    def survivors(self, lost: str) -> dict[str, object] | None:
        """The options of this split without the worker named in `lost` (a PeerLostError's
        peer), or None when no worker would be left."""
        kept = [(ref, w) for ref, w in zip(self.workers, self.weights[1:]) if ref.endpoint != lost]
        if len(kept) == len(self.workers) or not kept:
            return None
        return {
            **self.options,
            "workers": ",".join(ref.option() for ref, _ in kept),
            "weights": ",".join(f"{w:g}" for w in [self.weights[0], *(w for _, w in kept)]),
        }


def _way(loaded: TensorLoaded, nbytes: int) -> str:
    """The reduction for a step of `nbytes` of hidden states (by the cost model for "auto",
    once per step size)."""
    if loaded.reduction != "auto":
        return loaded.reduction
    if nbytes not in loaded.ways:
        loaded.ways[nbytes] = _choose(loaded, nbytes)
    return loaded.ways[nbytes]


def _choose(loaded: TensorLoaded, nbytes: int) -> str:
    return choose_reduction(loaded.timings, nbytes, loaded.hops or None)


def _star(loaded: TensorLoaded, layer: int, phase: str, x: np.ndarray, position: int) -> Any:
    """x [S, H] to every worker, this machine's partial meanwhile, every partial summed."""
    pending = [link.submit_partial(layer, phase, x, position) for link in loaded.links]
    total = loaded.local.partial(phase, layer, x, position)
    waited = time.perf_counter()
    for link, ident in zip(loaded.links, pending):
        total += link.partial(ident, x.shape)
    _count(loaded.stats, waited, 2 * x.nbytes * len(loaded.links))
    return total


def _ring(loaded: TensorLoaded, layer: int, phase: str, x: np.ndarray, position: int) -> Any:
    """x [S, H] to the first worker, a turn asked of each (so each link is watched), this
    machine's partial meanwhile, plus the last worker's sum. A worker whose hand-over did not
    reach the next names the next as lost (`PeerLostError.peer`), as a pipeline stage does."""
    from edge.cluster.errors import PeerLostError

    links, loaded.token = loaded.links, loaded.token + 1
    pending = [
        link.submit_ring(layer, phase, None if i else x, position, loaded.token, link is links[-1])
        for i, link in enumerate(links)
    ]
    total = loaded.local.partial(phase, layer, x, position)
    waited = time.perf_counter()
    for link, successor, ident in zip(links, links[1:], pending):
        why = link.handed_on(ident)
        if why is not None:
            raise PeerLostError(
                f"worker {link.name} could not hand the ring on to {successor.name}: {why}",
                successor.name,
            )
    total += links[-1].partial(pending[-1], x.shape)
    _count(loaded.stats, waited, 2 * x.nbytes)
    loaded.stats.ring += 1
    return total


def _count(stats: LinkStats, waited: float, nbytes: int) -> None:
    stats.wait_s += time.perf_counter() - waited
    stats.reductions += 1
    stats.bytes_sent += nbytes


def _measure(link: Any) -> LinkTimes:
    """A worker link's round trip and bandwidth, measured as the planner measures them."""
    from edge.cluster.members import measure

    return LinkTimes(*measure(link))


def _link_ring(links: list[Any], refs: list[WorkerRef], measure: bool) -> list[LinkTimes]:
    """Introduce each worker to the next, from the last back (the next must admit a worker's
    key before it connects); with `measure`, each worker's link to the next as it measured
    it. `ClusterError` where a worker could not reach the next."""
    hops = []
    for i in reversed(range(len(links))):
        upstream = refs[i - 1].public if i else None
        nxt = refs[i + 1] if i + 1 < len(refs) else None
        downstream = None if nxt is None else {"endpoint": nxt.endpoint, "key": nxt.public}
        meta = {"upstream": upstream, "downstream": downstream, "measure": measure}
        measured = links[i].request("link", meta).meta.get("next")
        if isinstance(measured, dict) and isinstance(measured.get("rtt_s"), float):
            bps = measured.get("link_bps")
            hops.insert(0, LinkTimes(measured["rtt_s"], bps if isinstance(bps, float) else None))
    return hops if len(hops) == len(links) - 1 else []  # else unknown: estimated


def _unlink_ring(links: list[Any]) -> None:
    """Workers forget their ring neighbours (one that is gone has nothing to forget)."""
    from edge.cluster.errors import ClusterError

    for link in links:
        if not link.lost:
            with contextlib.suppress(ClusterError):
                link.request("link", {"upstream": None, "downstream": None})
