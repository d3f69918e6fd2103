"""A cluster segment as a placement `Backend`: parts [start, end) run on a paired worker.

The engine compiles, loads, binds and runs it like any backend (devices/backend.py); `run`
sends the bound input (token ids [1, S] or hidden states [1, S, H]) and the position over the
worker link and copies the reply (hidden states or logits) into the bound output, so the
activations cross the network only at the segment's boundaries. The worker keeps the KV cache
of its blocks (the engine's `Resident` arrays for them stay unused). A lost worker raises
`PeerLostError` inside `run`, which the engine reports as a `BackendError` naming the segment.

Not registered by default (devices/ cannot import the cluster): `register_cluster_backend()`
adds it, then `Placement.split(n, [(0, "ort_cpu"), (k, "cluster", {"endpoint": ...,
"server_key": ..., "cluster": "home"})])` places parts [k, n) on the worker.
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
        self._link = None
        self._held: tuple[int, int, int] | None = None

    @property
    def device(self) -> str:
        return f"worker {self.options['endpoint']}"

    def supports(self, part: PartEntry, package: PackageSource) -> Support:
        if part.static_graphs:
            return Support(False, f"{part.name}: fixed-shape graphs do not run on workers yet")
        return YES

    def is_available(self) -> Support:
        from edge.cluster.errors import ClusterError, require_zmq
        from edge.cluster.keys import KeyStore

        try:
            require_zmq()
            KeyStore().cluster_keys(str(self.options["cluster"]))
        except (ClusterError, ConfigError) as exc:
            return Support(False, str(exc))
        return YES

    def compile(self, graph: SegmentGraph) -> Executable:
        """Nothing runs here: the names the engine binds, from the parts' interfaces."""
        produced = {name for p in graph.parts for name in p.outputs}
        inputs = {n for p in graph.parts for n in p.inputs if n not in produced}
        last = graph.parts[-1].outputs
        outputs = tuple(n for n in last if n == fmt.LOGITS or n.startswith("hidden."))
        return Executable(self.name, graph, frozenset(inputs), outputs)

    def load(self, executable: Executable, resident: Resident) -> ClusterLoaded:
        from edge.cluster.client import WorkerClient
        from edge.cluster.keys import KeyStore

        graph = executable.graph
        held = (graph.start, graph.end, int(resident.cos.shape[0]))
        if self._link is None or self._link.lost:  # type: ignore[attr-defined]
            keys = KeyStore().cluster_keys(str(self.options["cluster"]))
            self._link = WorkerClient(
                str(self.options["endpoint"]), str(self.options["server_key"]), keys
            )
            self._held = None
        if self._held != held:  # the decode and prompt graphs share one slice
            threads = self.options.get("worker_threads")
            self._link.load_slice(  # type: ignore[attr-defined]
                held[0], held[1], held[2], None if threads is None else int(threads)
            )
            self._held = held
        return ClusterLoaded(executable, self._link, {}, {})

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
        (target,) = loaded.executable.outputs
        out = loaded.outputs[target]  # [1, S, H] or logits [1, K, V]
        mode = "all" if target == fmt.LOGITS and out.shape[1] > 1 else "last"
        reply = loaded.link.step(x, position, mode)  # type: ignore[attr-defined]
        np.copyto(out, reply.reshape(out.shape))

    def unload(self, loaded: Loaded) -> None:
        assert isinstance(loaded, ClusterLoaded)
        loaded.inputs.clear()
        loaded.outputs.clear()

    def close(self) -> None:
        if self._link is not None:
            self._link.close()  # type: ignore[attr-defined]
            self._link = None


def _hidden(names: frozenset[str]) -> str:
    return next(n for n in names if n.startswith("hidden."))


def register_cluster_backend() -> type[Backend]:
    """Make "cluster" a backend name placements can use (idempotent)."""
    from devices import registry

    return registry.register(ClusterBackend, replace=True)
