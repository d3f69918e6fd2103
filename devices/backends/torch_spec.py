"""PyTorch as a backend: a segment computed from the manifest's spec and weights on a torch
device (CUDA on NVIDIA GPUs and Jetsons, MPS on Apple silicon, or the CPU).

It runs no ONNX graph: `devices.spec_forward.TorchParts` uploads the segment's weights once
(block-quantized ones dequantized to dense matrices in the compute dtype) and keeps its
blocks' KV cache on the device, where attention reads it every step; the engine's host cache
for those blocks stays untouched (its pages are never written, so they take no memory).
Activations cross to the host only at the segment's boundaries. torch is imported when the
backend is first used, so devices/ and every other backend work without it.
"""

from __future__ import annotations

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
    spec_interface,
)
from devices.backends.numpy_reference import spec_support
from devices.spec_forward.weights import (
    map_part,
    part_weights,
)
from edge import format as fmt
from edge.errors import ConfigError
from edge.format import PartEntry

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(eq=False)
class TorchLoaded(Loaded):
    parts: Any = None  # devices.spec_forward.torch_forward.TorchParts
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)


class TorchBackend(Backend):
    """Options: `device` (a torch device string: "cuda", "cuda:1", "mps", "cpu"; default:
    CUDA when present, else MPS, else the CPU), `dtype` ("float32", "float16", "bfloat16";
    default float16 on a GPU, float32 on the CPU), `threads` (CPU threads, for the CPU)."""

    name: ClassVar[str] = "torch"
    reads_graphs: ClassVar[bool] = False
    owns_cache: ClassVar[bool] = True  # the blocks' KV cache lives on the torch device
    OPTIONS: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "threads": int,
        "device": str,
        "dtype": str,
    }

    @classmethod
    def check_options(cls, options: dict) -> dict:
        options = super().check_options(options)
        if options.get("dtype", "float32") not in DTYPES:
            raise ConfigError(
                f"backend 'torch' option dtype={options['dtype']!r}; choose one of {DTYPES}"
            )
        return options

    @property
    def device(self) -> str:
        return str(self.options.get("device") or _default_device() or "cpu")

    # ---- ahead of time ----------------------------------------------------------------------
    def supports(self, part: PartEntry, package: PackageSource) -> Support:
        return spec_support(part, package, "the torch backend")

    def compile(self, graph: SegmentGraph) -> Executable:
        inputs, outputs = spec_interface(graph.parts)
        return Executable(self.name, graph, inputs, outputs)

    # ---- run time ---------------------------------------------------------------------------
    def is_available(self) -> Support:
        try:
            import torch
        except ImportError:
            return Support(False, "torch is not installed (pip install torch)")
        device = self.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            return Support(False, "torch has no CUDA device here")
        if device == "mps" and not torch.backends.mps.is_available():
            return Support(False, "torch has no MPS device here")
        return YES

    def load(self, executable: Executable, resident: Resident) -> TorchLoaded:
        from devices.spec_forward.torch_forward import TorchForwardConfig, TorchParts

        graph = executable.graph
        manifest = graph.package.manifest
        weights: dict[str, list] = {"embed": [], "block": [], "head": []}  # in part order
        for p in graph.parts:
            weights[p.kind].append(
                part_weights(manifest.spec, p, map_part(graph.package, p), manifest.quant)
            )
        device = self.device
        dtype = str(self.options.get("dtype") or ("float32" if device == "cpu" else "float16"))
        if device == "cpu" and "threads" in self.options:
            import torch

            torch.set_num_threads(int(self.options["threads"]))
        parts = TorchParts(
            manifest.spec,
            TorchForwardConfig(device=device, dtype=dtype),
            resident.keys[0].shape[2],
            embed=next(iter(weights["embed"]), None),
            blocks=weights["block"],
            head=next(iter(weights["head"]), None),
        )
        return TorchLoaded(executable, parts)

    def bind(
        self, loaded: Loaded, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        assert isinstance(loaded, TorchLoaded)
        loaded.inputs, loaded.outputs = dict(inputs), dict(outputs)

    def run(self, loaded: Loaded, position: int, size: int) -> None:
        assert isinstance(loaded, TorchLoaded) and loaded.parts is not None
        parts, inputs = loaded.parts, loaded.inputs
        if fmt.INPUT_IDS in inputs:
            x = parts.embed(inputs[fmt.INPUT_IDS][0, :size])
        else:
            hidden = next(v for k, v in inputs.items() if k.startswith("hidden."))
            x = parts.upload_hidden(hidden[0, :size])
        x = parts.blocks(x, position)
        if fmt.LOGITS in loaded.outputs:
            loaded.outputs[fmt.LOGITS][0] = parts.head(x, inputs[fmt.LOGITS_INDEX])
        else:
            out = next(v for k, v in loaded.outputs.items() if k.startswith("hidden."))
            out[0, :size] = x.float().cpu().numpy()

    def unload(self, loaded: Loaded) -> None:
        assert isinstance(loaded, TorchLoaded)
        loaded.parts, loaded.inputs, loaded.outputs = None, {}, {}


def _default_device() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"
