"""The numpy reference backend: parts computed from the manifest's spec and weights.

Ground truth in tests and the fallback of last resort: it needs nothing but numpy, computes
in float32 with block-quantized weights dequantized once (`devices.spec_forward`), and runs
any segment the spec forward knows (llama and qwen2 parts; not static int8 graphs).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
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
from devices.spec_forward.numpy_forward import (
    DequantizingLinear,
    block_forward,
    embed_forward,
    head_forward,
)
from devices.spec_forward.weights import (
    PartWeights,
    UnsupportedPartError,
    map_part,
    part_weights,
    shape_tensors,
)
from edge import format as fmt
from edge.format import PartEntry


@dataclass(eq=False)
class NumpyExecutable(Executable):
    weights: list[PartWeights] = field(default_factory=list)


@dataclass(eq=False)
class NumpyLoaded(Loaded):
    resident: Resident | None = None
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)


class NumpyBackend(Backend):
    """Runs a segment with the numpy forward; weights are read from the package's maps."""

    name: ClassVar[str] = "numpy"
    OPTIONS: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"threads": int}
    reads_graphs: ClassVar[bool] = False

    def supports(self, part: PartEntry, package: PackageSource) -> Support:
        return spec_support(part, package, "the numpy reference")

    def compile(self, graph: SegmentGraph) -> NumpyExecutable:
        manifest = graph.package.manifest
        weights = [
            part_weights(manifest.spec, p, map_part(graph.package, p), manifest.quant)
            for p in graph.parts
        ]
        inputs, outputs = spec_interface(graph.parts)
        return NumpyExecutable(self.name, graph, inputs, outputs, weights)

    def is_available(self) -> Support:
        return YES

    def load(self, executable: Executable, resident: Resident) -> NumpyLoaded:
        assert isinstance(executable, NumpyExecutable)
        return NumpyLoaded(executable, resident)

    def bind(
        self, loaded: Loaded, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        assert isinstance(loaded, NumpyLoaded)
        loaded.inputs, loaded.outputs = dict(inputs), dict(outputs)

    def run(self, loaded: Loaded, position: int, size: int) -> None:
        assert isinstance(loaded, NumpyLoaded) and loaded.resident is not None
        executable = loaded.executable
        assert isinstance(executable, NumpyExecutable)
        spec = executable.graph.package.manifest.spec
        resident, linear = loaded.resident, _LINEAR
        x = _hidden_input(loaded.inputs, size)
        for part, weights in zip(executable.graph.parts, executable.weights):
            if part.kind == "embed":
                x = embed_forward(weights, loaded.inputs[fmt.INPUT_IDS][:, :size])
            elif part.kind == "block":
                i = part.block_index
                x = block_forward(
                    spec,
                    weights,
                    x,
                    resident.keys[i],
                    resident.values[i],
                    position,
                    (resident.cos, resident.sin),
                    linear,
                )
            else:
                index = loaded.inputs[fmt.LOGITS_INDEX]
                logits = loaded.outputs[fmt.LOGITS]
                logits[...] = head_forward(spec, weights, x, index, linear)
                return
        hidden = next(v for k, v in loaded.outputs.items() if k.startswith("hidden."))
        hidden[:, :size] = x

    def unload(self, loaded: Loaded) -> None:
        assert isinstance(loaded, NumpyLoaded)
        loaded.inputs, loaded.outputs, loaded.resident = {}, {}, None


def spec_support(part: PartEntry, package: PackageSource, who: str) -> Support:
    """Whether a backend computing from the spec's weights (numpy, torch, the streamed path)
    can run `part`, judged from stand-ins of its tensors (no file is mapped or read)."""
    if part.static_graphs:
        return Support(
            False,
            f"{part.name}: fixed-shape int8 graphs are for NPU compilers; {who} computes "
            "from the spec's weights",
        )
    try:
        part_weights(package.manifest.spec, part, shape_tensors(part), package.manifest.quant)
    except UnsupportedPartError as exc:
        return Support(False, str(exc))
    return YES


_LINEAR = DequantizingLinear()  # dequantized matrices are cached per weight, process-wide


def _hidden_input(inputs: Mapping[str, np.ndarray], size: int) -> np.ndarray | None:
    name = next((k for k in inputs if k.startswith("hidden.")), None)
    return None if name is None else inputs[name][:, :size]
