"""Decoder forward passes computed from a package's architecture spec and weights, not from its
ONNX graphs: numpy (the reference backend, and the streamed-weights path with a pluggable matmul
kernel) and PyTorch (CUDA / Apple MPS).

`torch_forward` is imported only on attribute access, so `import devices.spec_forward` never
imports torch: a device without it runs the numpy forward.
"""

from __future__ import annotations

import importlib
from typing import Any

from devices.spec_forward.numpy_forward import (
    DequantizingLinear,
    ForwardConfig,
    Linear,
    NumpyForward,
    block_forward,
    embed_forward,
    head_forward,
    rope_tables,
)
from devices.spec_forward.weights import (
    BlockWeights,
    EmbeddingTable,
    EmbedWeights,
    FloatWeight,
    HeadWeights,
    Int8RowsWeight,
    LinearWeight,
    ModelWeights,
    NBitsWeight,
    UnsupportedPartError,
    load_model_weights,
    map_part,
    part_weights,
    view_tensors,
)

_TORCH_NAMES = ("TorchForward", "TorchForwardConfig")

__all__ = [
    "BlockWeights",
    "DequantizingLinear",
    "EmbedWeights",
    "EmbeddingTable",
    "FloatWeight",
    "ForwardConfig",
    "HeadWeights",
    "Int8RowsWeight",
    "Linear",
    "LinearWeight",
    "ModelWeights",
    "NBitsWeight",
    "NumpyForward",
    "UnsupportedPartError",
    "block_forward",
    "embed_forward",
    "head_forward",
    "load_model_weights",
    "map_part",
    "part_weights",
    "rope_tables",
    "view_tensors",
    *_TORCH_NAMES,
]


def __getattr__(name: str) -> Any:
    """`TorchForward` and its config, importing torch only now."""
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module("devices.spec_forward.torch_forward"), name)
    raise AttributeError(f"module 'devices.spec_forward' has no attribute {name!r}")
