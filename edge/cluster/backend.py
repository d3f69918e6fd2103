"""A cluster segment as a placement `Backend`: parts [start, end) run on a paired worker.

The engine compiles, loads, binds and runs it like any backend (devices/backend.py); `run`
sends the bound input (token ids [1, S] or hidden states [1, S, H]) and the position over the
worker link and copies the reply (hidden states or logits) into the bound output, so the
activations cross the network only at the segment's boundaries. The worker keeps the KV cache
of its blocks (the engine's `Resident` arrays for them stay unused, never written). A lost
worker raises `PeerLostError` inside `run`; the engine then re-places the segment on this
machine and rebuilds the KV cache from the tokens so far (`recovers`), and generation goes on.

`edge.backends` finds it by name (devices/ cannot import the cluster):
`Placement.split(n, [(0, "ort_cpu"), (k, "cluster", {"endpoint": ..., "server_key": ...,
"cluster": "home"})])` places parts [k, n) on the worker; `edge.cluster.placement` builds such
placements from the paired workers it finds.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from devices.backend import (
    YES,
    Backend,
    Executable,
    Loaded,
    PackageSource,
    Resident,
    SegmentGraph,
    Support,
    spec_interface,
)
from edge import format as fmt
from edge.errors import ConfigError
from edge.format import PartEntry

log = logging.getLogger("edge.cluster.backend")


@dataclass(eq=False)
class ClusterLoaded(Loaded):
    link: object  # WorkerClient
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    endpoint: str = ""
    key: str = ""  # the worker's public key
    cluster: str = ""
    # Pipeline stages on linked workers: this one's output goes straight to `downstream`'s
    # worker, whose step takes it from there; `pending` is this step's request, answered
    # once the output left (`ClusterBackend.run`).
    upstream: ClusterLoaded | None = None
    downstream: ClusterLoaded | None = None
    pending: int | None = None


class ClusterBackend(Backend):
    """Runs a segment on a worker at `endpoint` whose public key is `server_key`, as the
    coordinator of `cluster` (this machine's keys for it, from `edge cluster init`)."""

    name: ClassVar[str] = "cluster"
    reads_graphs: ClassVar[bool] = False  # the worker reads its own copy of the graphs
    recovers: ClassVar[bool] = True  # a failure is a worker gone: re-place, rebuild, go on
    owns_cache: ClassVar[bool] = True  # each worker holds its parts' KV cache
    OPTIONS: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "endpoint": str,
        "server_key": str,
        "cluster": str,
        "worker_threads": int,
    }

    def __init__(self, options: Mapping[str, object] | None = None) -> None:
        super().__init__(options)  # type: ignore[arg-type]
        for required in ("endpoint", "server_key", "cluster"):
            if required not in self.options:
                raise ConfigError(f"backend 'cluster' needs the option {required!r}")

    @property
    def device(self) -> str:
        return f"worker {self.options['endpoint']}"

    def supports(self, part: PartEntry, package: PackageSource) -> Support:
        if part.static_graphs:
            return Support(False, f"{part.name}: fixed-shape graphs do not run on workers yet")
        return YES

    def is_available(self) -> Support:
        return cluster_available(str(self.options["cluster"]))

    def reachable(self) -> bool:
        from edge.cluster.client import answers

        return answers(
            str(self.options["endpoint"]),
            str(self.options["server_key"]),
            str(self.options["cluster"]),
        )

    def compile(self, graph: SegmentGraph) -> Executable:
        """Nothing runs here: the names the engine binds, from the parts' interfaces."""
        inputs, outputs = spec_interface(graph.parts)
        return Executable(self.name, graph, inputs, outputs)

    def load(self, executable: Executable, resident: Resident) -> ClusterLoaded:
        from edge.cluster.client import WorkerClient
        from edge.cluster.keys import KeyStore

        graph = executable.graph
        keys = KeyStore().cluster_keys(str(self.options["cluster"]))
        link = WorkerClient(str(self.options["endpoint"]), str(self.options["server_key"]), keys)
        try:
            threads = self.options.get("worker_threads")
            link.load_slice(
                graph.start,
                graph.end,
                int(resident.cos.shape[0]),
                None if threads is None else int(threads),
            )
        except BaseException:
            link.close()
            raise
        options = self.options
        return ClusterLoaded(
            executable,
            link,
            {},
            {},
            str(options["endpoint"]),
            str(options["server_key"]),
            str(options["cluster"]),
        )

    def chain(self, loaded: Loaded, successor: Loaded | None) -> None:
        """Consecutive segments on two workers of one cluster: introduce this worker to the
        next (its key, so the next accepts it; the next's address and key, so it connects),
        and from then on a step's output goes worker to worker. Workers that cannot reach
        each other keep passing through this machine."""
        assert isinstance(loaded, ClusterLoaded)
        target = successor if isinstance(successor, ClusterLoaded) else None
        if target is not None and target.cluster != loaded.cluster:
            target = None
        if loaded.downstream is target:
            return
        _unlink(loaded)
        if target is None:
            return
        from edge.cluster.errors import ClusterError

        try:  # the next stage first: it must accept this one's key before this one connects
            target.link.request("link", {"upstream": loaded.key})  # type: ignore[attr-defined]
            loaded.link.request(  # type: ignore[attr-defined]
                "link", {"downstream": {"endpoint": target.endpoint, "key": target.key}}
            )
        except ClusterError as exc:
            log.warning(
                "worker %s cannot send to %s directly (%s); its output goes through here",
                loaded.endpoint,
                target.endpoint,
                exc,
            )
            return
        loaded.downstream, target.upstream = target, loaded

    def bind(
        self, loaded: Loaded, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        assert isinstance(loaded, ClusterLoaded)
        loaded.inputs.update(inputs)
        loaded.outputs.update(outputs)

    def run(self, loaded: Loaded, position: int, size: int) -> None:
        assert isinstance(loaded, ClusterLoaded)
        names = loaded.executable.inputs
        source = fmt.INPUT_IDS if fmt.INPUT_IDS in names else _hidden(names)
        x = loaded.inputs[source]  # int64 [1, S] or float32 [1, S, H]
        target = next(
            n for n in loaded.executable.outputs if n == fmt.LOGITS or n.startswith("hidden.")
        )
        out = loaded.outputs[target]  # [1, S, H] or logits [1, K, V]
        mode = "all" if target == fmt.LOGITS and out.shape[1] > 1 else "last"
        graph = loaded.executable.graph
        meta = {"position": position, "logits": mode, "slice": [graph.start, graph.end]}
        buffers: tuple[np.ndarray, ...] = (x,)
        upstream = loaded.upstream
        if upstream is not None and upstream.pending is not None:
            meta["from_peer"], buffers = upstream.pending, ()  # its worker sends the input
        link = loaded.link
        if loaded.downstream is not None:  # the next stage's worker gets the output
            meta["forward"] = True
            loaded.pending = link.submit("step", meta, buffers)  # type: ignore[attr-defined]
            return
        ident = link.submit("step", meta, buffers)  # type: ignore[attr-defined]
        _collect_upstream(loaded)
        reply = link.step_reply(ident)  # type: ignore[attr-defined]
        np.copyto(out, reply.reshape(out.shape))

    def unload(self, loaded: Loaded) -> None:
        assert isinstance(loaded, ClusterLoaded)
        _unlink(loaded)
        if loaded.upstream is not None:
            loaded.upstream.downstream = None  # its worker forwards to a stage that is gone
            loaded.upstream = None
        loaded.inputs.clear()
        loaded.outputs.clear()
        loaded.link.close()  # type: ignore[attr-defined]


def cluster_available(cluster: str) -> Support:
    """Whether this machine can coordinate `cluster`: pyzmq installed, the cluster's keys here."""
    from edge.cluster.errors import ClusterError, require_zmq
    from edge.cluster.keys import KeyStore

    try:
        require_zmq()
        KeyStore().cluster_keys(cluster)
    except (ClusterError, ConfigError) as exc:
        return Support(False, str(exc))
    return YES


def _unlink(loaded: ClusterLoaded) -> None:
    """Stop `loaded`'s worker forwarding (it may be gone: nothing to tell it then)."""
    from edge.cluster.errors import ClusterError

    target, loaded.downstream, loaded.pending = loaded.downstream, None, None
    if target is None:
        return
    target.upstream = None
    with contextlib.suppress(ClusterError):
        loaded.link.request("link", {"downstream": None})  # type: ignore[attr-defined]


def _collect_upstream(last: ClusterLoaded) -> None:
    """The replies of the linked stages before `last`, first to last: each says its output
    went on. A stage that failed, or whose output could not reach the next, raises with
    `failed_stage` naming the segment whose device to give up (`Backend.chain`)."""
    from edge.cluster.errors import PeerLostError

    stages = []
    stage = last.upstream
    while stage is not None and stage.pending is not None:
        stages.append(stage)
        stage = stage.upstream
    for stage in reversed(stages):
        ident, stage.pending = stage.pending, None
        try:
            reply = stage.link.collect(ident, "step")  # type: ignore[attr-defined]
        except Exception as exc:
            exc.failed_stage = stage  # type: ignore[attr-defined]
            raise
        if reply.meta.get("forwarded") is not True:
            nxt = stage.downstream or last
            lost = PeerLostError(
                f"worker {stage.endpoint} could not pass its output to {nxt.endpoint}: "
                f"{str(reply.meta.get('why', ''))[:200]}",
                nxt.endpoint,
            )
            lost.failed_stage = nxt  # type: ignore[attr-defined]
            raise lost


def _hidden(names: frozenset[str]) -> str:
    return next(n for n in names if n.startswith("hidden."))
