"""Blocks sharded over this machine and paired workers (tensor parallel, TPI-LLM's split) as a
placement `Backend`.

Every block of the segment is split by heads and FFN columns (`edge.cluster.shards`); this
machine computes its own share and is the centre of a star allreduce: per block it sends the
hidden states to every worker, computes its partial while they compute theirs, sums the
partials (plus the bias and sandwich norm the shares leave out) and adds the residual, once
for attention and once for the FFN. So a decoded token costs 2 x blocks round trips to the
slowest worker, and each device reads only its share of the weights: it wins where the
devices' compute outweighs the link latency (see BENCHMARKS.md, "Cluster tensor parallel").

`edge.backends` finds it by name:
`Placement.split(n, [(0, "ort_cpu"), (1, "tensor", {"cluster": "home", "workers":
"tcp://10.0.0.7:5710|<key>,tcp://10.0.0.8:5710|<key>", "weights": "2,1,1"}), (n - 1,
"ort_cpu")])`. `weights` sizes the shares, this machine first. A lost worker raises
`PeerLostError` inside `run`; `survivors` then names the same split without it, so the engine
re-shards over the devices left (they read the missing slices from their own disks) and
rebuilds the KV cache from the tokens so far.
"""

from __future__ import annotations

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
from edge.errors import ConfigError
from edge.format import PartEntry


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
    """Reductions run and the time spent waiting for the slowest worker, per phase."""

    reductions: int = 0
    wait_s: float = 0.0
    bytes_sent: int = 0


@dataclass(eq=False)
class TensorLoaded(Loaded):
    links: list[Any]  # WorkerClient, one per worker
    local: Any  # ShardRunner: this machine's share (and each block's `Reduction`)
    shares: list[Any]
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    outputs: dict[str, np.ndarray] = field(default_factory=dict)
    stats: LinkStats = field(default_factory=LinkStats)


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
        except BaseException:
            for link in links:
                link.close()
            raise
        return TensorLoaded(executable, links, local, shares)

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
        stats = loaded.stats
        for layer, reduction in loaded.local.reductions.items():
            for phase in ("attention", "ffn"):
                pending = [link.submit_partial(layer, phase, x, position) for link in loaded.links]
                total = loaded.local.partial(phase, layer, x, position)
                waited = time.perf_counter()
                for link, ident in zip(loaded.links, pending):
                    total += link.partial(ident, x.shape)
                stats.wait_s += time.perf_counter() - waited
                stats.reductions += 1
                stats.bytes_sent += 2 * x.nbytes * len(loaded.links)
                x = finish(spec, reduction, phase, total, x)
        target[0, :size] = x

    def unload(self, loaded: Loaded) -> None:
        assert isinstance(loaded, TensorLoaded)
        loaded.inputs.clear()
        loaded.outputs.clear()
        for link in loaded.links:
            link.close()

    def summary(self, loaded: Loaded) -> str | None:
        assert isinstance(loaded, TensorLoaded)
        spans = ", ".join(
            f"heads {s.heads[0]}-{s.heads[1] - 1} ffn {s.ffn[0]}-{s.ffn[1] - 1}"
            for s in loaded.shares
        )
        return f"shares (this machine first): {spans}"

    def report(self, loaded: Loaded) -> str | None:
        assert isinstance(loaded, TensorLoaded)
        s = loaded.stats
        if not s.reductions:
            return None
        return (
            f"tensor parallel: {s.reductions} reductions, {1e3 * s.wait_s / s.reductions:.2f} ms "
            f"waiting per reduction beyond this machine's share, {s.bytes_sent >> 10} KiB sent"
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
