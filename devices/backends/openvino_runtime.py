"""OpenVINO's own runtime (PyPI `openvino`): a second real runtime, on CPUs here and on Intel
GPUs and NPUs elsewhere.

OpenVINO reads our ONNX graphs directly, com.microsoft ops included (GroupQueryAttention,
MatMulNBits int4, GatherBlockQuantized: measured on 2026.4, int4 blocks match ONNX Runtime to
1e-5). Its ONNX reader resolves external weights only relative to a model *file* (from bytes it
resolves against the working directory), so a segment is built from the parts' own graph files
in the package, which OpenVINO memory-maps, and chained into one model with OpenVINO's graph
API: each part's `hidden.N` input is wired to the previous part's output, shared inputs
(rope tables, sequence lengths) become one parameter.

Buffers: inputs and the hidden/logits outputs are the engine's arrays wrapped without a copy
(`ov.Tensor(array, shared_memory=True)`; OpenVINO writes into a preset output tensor of the
right shape). The KV cache cannot be updated in place: OpenVINO's GroupQueryAttention returns
present as a new [1, H_kv, total, D] tensor (total = tokens so far), not the [.., max_context,
..] buffer it read past from, so after each step only the new positions [position, position +
size) are copied into the cache (H_kv * size * D floats per layer).

On CPUs with bf16 support OpenVINO computes in bf16 by default (measured here: error 0.2 on a
576-wide dot product, enough to change greedy tokens); this backend asks for f32 unless told.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

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
    part_graph_files,
)
from devices.backends.onnx_graph import read_graph
from edge.errors import ConfigError
from edge.format import PartEntry

INSTALL = "pip install 'edge[openvino]'"
PROPERTY = re.compile(r"^[A-Z][A-Z0-9_]*$")  # OpenVINO's own property names


@functools.lru_cache(maxsize=1)
def _core() -> Any:
    import openvino as ov

    return ov.Core()


def _openvino() -> Any:
    import openvino as ov

    return ov


@dataclass(eq=False)
class OvExecutable(Executable):
    compiled: Any  # openvino.CompiledModel


@dataclass(eq=False)
class OvLoaded(Loaded):
    request: Any  # openvino.InferRequest
    # (present output tensor name, cache array) per layer: new positions copied after a step
    presents: list[tuple[str, np.ndarray]]
    # outputs bound to our arrays; checked once after a bind that OpenVINO wrote into them
    bound: list[tuple[str, np.ndarray]] = field(default_factory=list)
    verify: bool = False
    copy_back: bool = False


class OpenVinoBackend(Backend):
    """OpenVINO runtime on `device` ("CPU", "GPU", "NPU"; default "CPU").

    Options: `device`, `threads` (INFERENCE_NUM_THREADS), and any OpenVINO property by its
    own upper-case name, e.g. {"INFERENCE_PRECISION_HINT": "f32"} (the default here) or
    {"PERFORMANCE_HINT": "LATENCY"}.
    """

    name: ClassVar[str] = "openvino"
    OPTIONS: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"threads": int, "device": str}

    @classmethod
    def check_options(cls, options: dict) -> dict:
        properties = {k: v for k, v in options.items() if PROPERTY.match(k)}
        for key, value in properties.items():
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise ConfigError(
                    f"backend 'openvino' property {key}={value!r} must be a string or number"
                )
        rest = super().check_options({k: v for k, v in options.items() if k not in properties})
        return {**rest, **properties}

    @property
    def device(self) -> str:
        return str(self.options.get("device", "CPU"))

    def config(self, graph: SegmentGraph | None = None) -> dict[str, str]:
        """The properties compile_model gets for `graph`."""
        config = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if "threads" in self.options:
            config["INFERENCE_NUM_THREADS"] = str(self.options["threads"])
        if graph is not None and _float_nbits(graph.model):
            # MatMulNBits accuracy_level < 4 asks for float activations; OpenVINO quantizes
            # them to int8 by default (what accuracy_level 4 means), so turn that off.
            config["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = "0"
        config.update({k: str(v) for k, v in self.options.items() if PROPERTY.match(k)})
        return config

    # ---- ahead of time ----------------------------------------------------------------------
    def supports(self, part: PartEntry, package: PackageSource) -> Support:
        available = self.is_available()
        if not available:
            return available
        core = _core()
        for graph in part_graph_files(part):
            path = package.root / graph
            try:
                model = core.read_model(str(path))
            except RuntimeError as exc:  # an op its ONNX reader does not know, a bad file
                return Support(
                    False, f"OpenVINO cannot read {graph} of {part.name}: {_first_line(exc)}"
                )
            wide = read_graph(path.read_bytes()).quantize_types() & {"uint16", "int16"}
            if wide and self.device == "CPU":
                return Support(
                    False,
                    f"{graph}: OpenVINO's CPU plugin drops 16-bit "
                    "QuantizeLinear/DequantizeLinear pairs (measured on "
                    "2026.4: no rounding, no clipping), so it would not "
                    "compute this graph's activations as written",
                )
            if self.device.split(".")[0] == "NPU":
                dynamic = [
                    i.get_any_name() for i in model.inputs if i.get_partial_shape().is_dynamic
                ]
                if dynamic:
                    return Support(
                        False,
                        f"{graph}: the NPU plugin needs static shapes; "
                        f"inputs {dynamic} are dynamic (export with --quant "
                        "q-static-int8)",
                    )
            if self.device != "CPU":  # the CPU plugin runs every op the reader produces
                placed = core.query_model(model, self.device)
                missing = [
                    op.get_type_name()
                    for op in model.get_ops()
                    if op.get_friendly_name() not in placed
                ]
                if missing:
                    return Support(
                        False, f"{graph}: {self.device} cannot run {sorted(set(missing))}"
                    )
        return YES

    def compile(self, graph: SegmentGraph) -> OvExecutable:
        core = _core()
        model = _chain([core.read_model(str(path)) for path in graph.files], graph.label)
        compiled = core.compile_model(model, self.device, self.config(graph))
        # Every name of every port: compiling may add names (logits becomes also
        # "head/gemm_8"), and get_any_name() may then return the one we did not write.
        inputs = frozenset(n for i in compiled.inputs for n in i.get_names())
        outputs = tuple(n for o in compiled.outputs for n in sorted(o.get_names()))
        return OvExecutable(self.name, graph, inputs, outputs, compiled)

    # ---- run time ---------------------------------------------------------------------------
    def is_available(self) -> Support:
        try:
            core = _core()
        except ImportError:
            return Support(False, f"the openvino package is not installed ({INSTALL})")
        devices = core.available_devices
        wanted = self.device.split(".")[0]
        if not any(d == self.device or d.split(".")[0] == wanted for d in devices):
            return Support(
                False,
                f"OpenVINO finds no {self.device} device here "
                f"(it has {', '.join(devices) or 'none'})",
            )
        return YES

    def load(self, executable: Executable, resident: Resident) -> OvLoaded:
        assert isinstance(executable, OvExecutable)
        request = executable.compiled.create_infer_request()
        parts = executable.graph.parts
        for name, array in resident.inputs_for(parts).items():
            if name in executable.inputs:
                request.set_tensor(name, _shared(array))
        presents = [
            (name, array)
            for name, array in resident.presents_for(parts).items()
            if name in executable.outputs
        ]
        return OvLoaded(executable, request, presents)

    def bind(
        self, loaded: Loaded, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        assert isinstance(loaded, OvLoaded)
        for name, array in inputs.items():
            loaded.request.set_tensor(name, _shared(array))
        for name, array in outputs.items():
            loaded.request.set_tensor(name, _shared(array))
        loaded.bound = list(outputs.items())
        loaded.verify, loaded.copy_back = True, False

    def run(self, loaded: Loaded, position: int, size: int) -> None:
        assert isinstance(loaded, OvLoaded)
        request = loaded.request
        request.infer(share_outputs=True)  # the default copies every output into new arrays
        end = position + size
        for name, cache in loaded.presents:
            # present: [1, H_kv, total, D], positions absolute like the cache's
            cache[:, :, position:end] = request.get_tensor(name).data[:, :, position:end]
        if loaded.verify:
            self._check_outputs(loaded)
        if loaded.copy_back:
            for name, array in loaded.bound:
                array[...] = request.get_tensor(name).data

    @staticmethod
    def _check_outputs(loaded: OvLoaded) -> None:
        """Once per bind: did OpenVINO write into our arrays, or into tensors of its own?"""
        loaded.verify = False
        for name, array in loaded.bound:
            if not np.shares_memory(loaded.request.get_tensor(name).data, array):
                loaded.copy_back = True  # correct, one copy per output per step
                array[...] = loaded.request.get_tensor(name).data

    def unload(self, loaded: Loaded) -> None:
        assert isinstance(loaded, OvLoaded)
        loaded.presents.clear()
        loaded.bound.clear()


def _shared(array: np.ndarray) -> Any:
    """An OpenVINO tensor over `array`'s memory (no copy: it must be C-contiguous)."""
    assert array.flags.c_contiguous, "OpenVINO shares only C-contiguous arrays"
    return _openvino().Tensor(array, shared_memory=True)


def _chain(models: list[Any], label: str) -> Any:
    """One model computing `models` in order: an input named like an earlier model's output
    (or like an earlier input) reads that output (or that input); outputs consumed later
    become internal."""
    ov = _openvino()
    if len(models) == 1:
        return models[0]
    params: dict[str, Any] = {}
    produced: dict[str, Any] = {}
    consumed: set[str] = set()
    results = []
    for model in models:
        for param in model.get_parameters():
            name = param.output(0).get_any_name()
            source = produced.get(name)
            if source is None and name in params:
                source = params[name].output(0)
            if source is None:
                params[name] = param
                continue
            consumed.add(name)
            for target in list(param.output(0).get_target_inputs()):
                target.replace_source_output(source)
        for result in model.get_results():
            produced[result.input_value(0).get_any_name()] = result.input_value(0)
            results.append(result)
    keep = [r for r in results if r.input_value(0).get_any_name() not in consumed]
    return ov.Model(keep, list(params.values()), label)


def _float_nbits(model: bytes) -> bool:
    """True when every MatMulNBits of the graph asks for float compute (accuracy_level < 4)."""
    levels = [
        n.ints.get("accuracy_level", 0)
        for n in read_graph(model).nodes
        if n.op_type == "MatMulNBits"
    ]
    return bool(levels) and max(levels) < 4


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
