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


@dataclass(eq=False)
class ClusterLoaded(Loaded):
    link: object  # WorkerClient
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]


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
        return ClusterLoaded(executable, link, {}, {})

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
        reply = loaded.link.step(  # type: ignore[attr-defined]
            x, position, mode, expect=(graph.start, graph.end)
        )
        np.copyto(out, reply.reshape(out.shape))

    def unload(self, loaded: Loaded) -> None:
        assert isinstance(loaded, ClusterLoaded)
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


def _hidden(names: frozenset[str]) -> str:
    return next(n for n in names if n.startswith("hidden."))
