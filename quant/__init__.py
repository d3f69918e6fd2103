"""Weight quantization: config objects, one `quantize(weight, config)` verb, the `MatMulNBits`
packing, lossless GGUF Q4_0/Q8_0 repacking and accuracy metrics. Knows nothing of devices.

Importing `quant` needs only numpy; the ONNX node builders (`matmul_nbits_*`) import onnx on
first use, so a runtime without onnx can still dequantize.
"""

from __future__ import annotations

import importlib
from typing import Any

from quant.blockwise import QuantizedWeight, dequantize, quantize
from quant.config import TokenInt8Config, WeightQuantConfig
from quant.gguf_repack import is_lossless, repack_gguf, repack_q4_0, repack_q8_0
from quant.metrics import max_relative_error, relative_error, sqnr_db

_ONNX_NAMES = (
    "matmul_nbits_arrays",
    "matmul_nbits_model",
    "matmul_nbits_names",
    "matmul_nbits_node",
)

__all__ = [
    "QuantizedWeight",
    "TokenInt8Config",
    "WeightQuantConfig",
    "dequantize",
    "is_lossless",
    "max_relative_error",
    "quantize",
    "relative_error",
    "repack_gguf",
    "repack_q4_0",
    "repack_q8_0",
    "sqnr_db",
    *_ONNX_NAMES,
]


def __getattr__(name: str) -> Any:
    """Lazy access to the onnx-dependent builders."""
    if name in _ONNX_NAMES:
        return getattr(importlib.import_module("quant.matmul_nbits"), name)
    raise AttributeError(f"module 'quant' has no attribute {name!r}")
