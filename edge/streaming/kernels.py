"""The matmul kernel of streamed parts: weights are read where the window's buffers hold them.

ONNX Runtime pre-packs quantized weights only when they are session initializers; fed as
inputs, `MatMulNBits` runs ~100x slower, and a session per streamed block costs 40-70 ms to
build. So streamed block-quantized weights go through our own JIT-compiled kernel
(`devices.kernels.NBitsMatMul`, one compiled instance per weight shape) and float weights
through numpy's BLAS, both reading the buffers in place. int8 rows ("w8a8") are widened to a
float32 copy per step through numpy: correct, but 4x the bytes of a resident w8a8 step.
"""

from __future__ import annotations

import numpy as np

from devices.kernels.nbits_matmul import NBitsMatMul, NBitsSpec
from devices.spec_forward.numpy_forward import int8_rows_matrix, round_per_token
from devices.spec_forward.weights import FloatWeight, Int8RowsWeight, LinearWeight


class StreamedLinear:
    """A `devices.spec_forward.Linear`: [M, K] x weight -> [M, N], no copies of the weight."""

    def __init__(self, threads: int | None = None, activations: str = "auto") -> None:
        self.threads, self.activations = threads, activations
        self._kernels: dict[NBitsSpec, NBitsMatMul] = {}

    def __call__(self, x: np.ndarray, weight: LinearWeight) -> np.ndarray:
        if isinstance(weight, FloatWeight):
            return x @ weight.weight
        if isinstance(weight, Int8RowsWeight):
            return round_per_token(x) @ int8_rows_matrix(weight)
        spec = NBitsSpec.of(weight)
        kernel = self._kernels.get(spec)
        if kernel is None:
            kernel = self._kernels[spec] = NBitsMatMul(spec, self.threads, self.activations)
        return kernel(
            np.ascontiguousarray(x, np.float32), weight.packed, weight.scales, weight.zero_points
        )
