"""ONNX Runtime on the CPU: the reference backend every other one falls back to.

One session per segment (a `session.run` costs microseconds, but dozens per token add up),
weights handed over from our own memory maps (`add_external_initializers`: the path streaming
uses too) and every buffer bound by address through IOBinding. The KV cache is written in
place: com.microsoft.GroupQueryAttention's past and present are bound to the same buffer, so a
decode step allocates nothing and copies nothing in Python.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
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
from edge.errors import ConfigError, PackageError
from edge.format import PartEntry
from edge.package_files import drop_pages

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
    turning it off helps when another runtime shares the cores between our runs).
    """

    name: ClassVar[str] = "ort_cpu"
    OPTIONS: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "threads": int,
        "optimization": str,
        "spinning": bool,
    }
    provider: ClassVar[str] = CPU

    @classmethod
    def check_options(cls, options: dict) -> dict:
        options = super().check_options(options)
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
        options = self.session_options(graph)
        used = set(read_graph(graph.model).initializers)  # a prefill graph's weights differ
        tensors = {t.name: t for p in graph.parts for t in p.tensors if t.name in used}
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
        return OrtExecutable(
            self.name,
            graph,
            frozenset(i.name for i in session.get_inputs()),
            tuple(o.name for o in session.get_outputs()),
            session,
            weights,
        )

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
