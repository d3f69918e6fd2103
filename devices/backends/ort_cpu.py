"""ONNX Runtime on the CPU: the reference backend every other one falls back to.

One session per segment (a `session.run` costs microseconds, but dozens per token add up),
weights handed over from our own memory maps (`add_external_initializers`: the path streaming
uses too) and every buffer bound by address through IOBinding. The KV cache is written in
place: com.microsoft.GroupQueryAttention's past and present are bound to the same buffer, so a
decode step allocates nothing and copies nothing in Python.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import onnxruntime as ort

from devices.backend import (
    YES,
    Backend,
    Executable,
    Loaded,
    PackageSource,
    Resident,
    SegmentGraph,
    Support,
    part_graph_files,
)
from devices.backends.onnx_graph import read_graph
from devices.backends.row_slices import split_wide_matmuls
from edge.errors import ConfigError, PackageError
from edge.format import MANIFEST_FILE, PartEntry, TensorEntry
from edge.package_files import drop_pages
from edge.prepacked import check_mode

log = logging.getLogger("edge.devices")

CPU = "CPUExecutionProvider"
OPTIMIZATION_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(eq=False)
class OrtExecutable(Executable):
    session: ort.InferenceSession
    # The memory maps the session's initializers point into: alive as long as the session.
    weights: list[np.ndarray] = field(repr=False)


@dataclass(eq=False)
class OrtLoaded(Loaded):
    session: ort.InferenceSession
    io: Any  # onnxruntime.IOBinding


def _ptr(array: np.ndarray) -> int:
    return array.ctypes.data


class OrtCpuBackend(Backend):
    """ONNX Runtime's CPU execution provider.

    Options: `threads` (intra-op threads), `optimization` ("disable", "basic", "extended",
    "all"; default "all"), `spinning` (let idle pool threads spin between runs; default on,
    turning it off helps when another runtime shares the cores between our runs), `prepacked`
    ("build", "use" or "off", the default: ONNX Runtime's packed weights kept in edge's cache
    and mapped at later loads, `devices.backends.ort_prepacked`; only for a package whose
    hashes were checked).
    """

    name: ClassVar[str] = "ort_cpu"
    OPTIONS: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "threads": int,
        "optimization": str,
        "spinning": bool,
        "prepacked": str,
    }
    provider: ClassVar[str] = CPU

    @classmethod
    def check_options(cls, options: dict) -> dict:
        options = super().check_options(options)
        check_mode(options.get("prepacked", "off"), f"backend {cls.name!r} option prepacked")
        level = options.get("optimization", "all")
        if level not in OPTIMIZATION_LEVELS:
            raise ConfigError(
                f"backend {cls.name!r} option optimization={level!r}; allowed: "
                f"{sorted(OPTIMIZATION_LEVELS)}"
            )
        return options

    # ---- ahead of time ----------------------------------------------------------------------
    def supports(self, part: PartEntry, package: PackageSource) -> Support:
        # Every graph edge exports targets this provider; only a missing file can stop it.
        for graph in part_graph_files(part):
            if not (package.root / graph).is_file():
                return Support(False, f"{part.name}: graph file {graph} is missing")
        return YES

    def session_options(self, graph: SegmentGraph) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(self.options.get("threads", 0))
        options.inter_op_num_threads = 1
        options.graph_optimization_level = OPTIMIZATION_LEVELS[
            str(self.options.get("optimization", "all"))
        ]
        if not self.options.get("spinning", True):
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if graph.step is not None and self.provider == CPU:
            # A fixed-shape QDQ package is an NPU's graph; on the CPU keep its Q/DQ semantics.
            # ORT's int8 fusions change them per step length (measured: logits differ by up
            # to 1.0 between the 1-token and 64-token graphs; 0.2 with them off).
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        return options

    def providers(self) -> Sequence[Any]:
        return [CPU]

    def compile(self, graph: SegmentGraph) -> OrtExecutable:
        used = set(read_graph(graph.model).initializers)  # a prefill graph's weights differ
        tensors = {t.name: t for p in graph.parts for t in p.tensors if t.name in used}
        if self.options.get("prepacked", "off") != "off" and self.provider == CPU and tensors:
            # Matched to its stored packing one slice at a time, a wide matrix (the head) no
            # longer raises the load's peak by its size three times over (row_slices.py).
            model, sliced = split_wide_matmuls(graph.model, tensors)
            mapped = replace(graph, model=model)
            session = self._mapped_session(mapped, sliced)
            if session is not None:
                return self._executable(mapped, session, [])
        options = self.session_options(graph)
        # The weights come from our own memory maps (the same path streaming will use).
        weights = [graph.package.tensor(t) for t in tensors.values()]
        if tensors:
            options.add_external_initializers(
                list(tensors), [ort.OrtValue.ortvalue_from_numpy(w) for w in weights]
            )
        try:
            session = ort.InferenceSession(graph.model, options, providers=self.providers())
        except Exception as exc:  # onnxruntime's pybind errors share no base but Exception
            raise PackageError(
                f"ONNX Runtime cannot load {graph.label}: {str(exc).splitlines()[0][:500]}"
            ) from exc
        # ONNX Runtime has pre-packed the quantized matrices into its own buffers; the pages
        # of our maps it read to do so would otherwise stay resident: the weights twice.
        for weight in weights:
            drop_pages(weight)
        return self._executable(graph, session, weights)

    def _executable(
        self, graph: SegmentGraph, session: ort.InferenceSession, weights: list[np.ndarray]
    ) -> OrtExecutable:
        return OrtExecutable(
            self.name,
            graph,
            frozenset(i.name for i in session.get_inputs()),
            tuple(o.name for o in session.get_outputs()),
            session,
            weights,
        )

    def _mapped_session(
        self, graph: SegmentGraph, tensors: dict[str, TensorEntry]
    ) -> ort.InferenceSession | None:
        """A session mapping the packed weights stored for this segment, built first if
        missing or changed; None (the heap path follows) where the package's hashes were not
        checked or the cache cannot hold the store, said in the log."""
        from devices.backends.ort_prepacked import PackageRef, PrepackedStore, store_key
        from edge.hashing import file_sha256

        if not getattr(graph.package, "hashes_checked", False):
            log.info("%s: package hashes not checked; packed weights stay on the heap", graph.label)
            return None
        sha = {f.path: f.sha256 for f in graph.package.manifest.files}
        files = [(t.file, sha.get(t.file, "")) for t in tensors.values()]
        names = [f"{t.name}@{t.file}:{t.offset}+{t.nbytes}" for t in tensors.values()]
        settings = {
            "optimization": str(self.options.get("optimization", "all")),
            "step": graph.step,
            "tensors": hashlib.sha256("\n".join(names).encode()).hexdigest(),
            "package": str(graph.package.root),  # a store is pruned with its package's folder
        }
        store = PrepackedStore.for_key(store_key(graph.model, files, settings))
        read: list[np.ndarray] = []

        def weights() -> tuple[list[str], list[np.ndarray]]:
            read.extend(graph.package.tensor(t) for t in tensors.values())
            return list(tensors), read

        try:
            if not store.valid():
                if self.options.get("prepacked") != "build" or not _room_to_build(graph, tensors):
                    return None
                manifest = graph.package.root / MANIFEST_FILE
                package = PackageRef(graph.package.root, file_sha256(manifest))
                options = self.session_options(graph)
                store.build(graph.model, options, self.providers(), weights, package)
            return store.open(self.session_options(graph), self.providers())
        except Exception as exc:  # a full disk, a read-only cache, ONNX Runtime refusing
            log.warning(
                "%s: cannot map packed weights from %s (%s); packing them on the heap",
                graph.label,
                store.root,
                str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__,
            )
            return None
        finally:
            for weight in read:  # the maps' pages the packing read: never read again
                drop_pages(weight)

    # ---- run time ---------------------------------------------------------------------------
    def is_available(self) -> Support:
        if self.provider not in ort.get_available_providers():
            return Support(
                False,
                f"this onnxruntime {ort.__version__} has no {self.provider} "
                f"(it has {', '.join(ort.get_available_providers())})",
            )
        return YES

    def load(self, executable: Executable, resident: Resident) -> OrtLoaded:
        assert isinstance(executable, OrtExecutable)
        loaded = OrtLoaded(executable, executable.session, executable.session.io_binding())
        parts = executable.graph.parts
        inputs = {k: v for k, v in resident.inputs_for(parts).items() if k in executable.inputs}
        # past and present are one buffer: the attention op appends the step in place.
        outputs = {k: v for k, v in resident.presents_for(parts).items() if k in executable.outputs}
        self.bind(loaded, inputs, outputs)
        return loaded

    def bind(
        self, loaded: Loaded, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        assert isinstance(loaded, OrtLoaded)
        for name, array in inputs.items():
            loaded.io.bind_input(name, "cpu", 0, array.dtype.type, list(array.shape), _ptr(array))
        for name, array in outputs.items():
            loaded.io.bind_output(name, "cpu", 0, array.dtype.type, list(array.shape), _ptr(array))

    def run(self, loaded: Loaded, position: int, size: int) -> None:
        loaded.session.run_with_iobinding(loaded.io)  # type: ignore[attr-defined]

    def unload(self, loaded: Loaded) -> None:
        assert isinstance(loaded, OrtLoaded)
        loaded.io.clear_binding_inputs()
        loaded.io.clear_binding_outputs()


# A build holds the package's maps, the heap copy being packed and what ONNX Runtime writes:
# measured peaks 3.2x (Qwen2.5-Coder-1.5B int4) to 4.0x (SmolLM2 float32) the weights' bytes,
# above the heap path's ~2.6x. Where that is not available, the heap path runs as before.
BUILD_PEAK_FACTOR = 4.0
# A store takes 2.1-2.4x the weights on disk (the originals beside the packed copies); it is
# built only where that leaves this much of the disk free: a cache must never fill a disk.
STORE_DISK_FACTOR = 2.5
DISK_KEPT_FREE = 1 << 30
DISK_KEPT_SHARE = 0.05


def _room_to_build(graph: SegmentGraph, tensors: Mapping[str, TensorEntry]) -> bool:
    """Whether this machine has the memory a store build peaks at for these weights and the
    disk the store takes; if not, said in the log (the heap path then loads as it always
    did)."""
    import shutil

    from devices.memory_info import read_memory
    from edge.paths import cache_dir

    weights = sum(t.nbytes for t in tensors.values())
    need, free = int(BUILD_PEAK_FACTOR * weights), read_memory().budget
    disk = shutil.disk_usage(cache_dir())
    store = int(STORE_DISK_FACTOR * weights)
    kept = max(DISK_KEPT_FREE, int(DISK_KEPT_SHARE * disk.total))
    if need <= free and store + kept <= disk.free:
        return True
    log.info(
        "%s: %d MiB of memory and %d MiB of disk free; a packed-weight store needs ~%d MiB to "
        "build and %d MiB on disk (leaving %d MiB free); packing on the heap",
        graph.label,
        free >> 20,
        disk.free >> 20,
        need >> 20,
        store >> 20,
        kept >> 20,
    )
    return False
