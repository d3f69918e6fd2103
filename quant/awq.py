"""Activation-aware weight scaling (AWQ, Lin et al. 2023), calibrated on real activations.

Input channels that carry large activations matter most; scaling them up in the weight
before quantization (and the activation down by the same factor, folded into the previous
op) gives them finer steps. Per linear layer, `awq_scale` searches the exponent alpha of
s = mean|x|^alpha that minimises the error of the quantized layer's output on calibration
activations. The result is exact in float arithmetic: (x / s) @ (diag(s) W) == x @ W.
"""

from __future__ import annotations

import numpy as np

from quant.blockwise import dequantize, quantize
from quant.config import WeightQuantConfig

ALPHAS = tuple(i / 10 for i in range(11))


def _scales(activation_mean: np.ndarray, alpha: float) -> np.ndarray:
    s = np.maximum(activation_mean, 1e-8) ** alpha
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)  # keep weights near their range


def smooth_scale(weight: np.ndarray, x: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """SmoothQuant (Xiao et al. 2023): per-input-channel s [K] moving activation outliers into
    the weight, s = max|x|^alpha / max|W|^(1 - alpha), so static per-tensor int8 activations
    lose less. weight: [K, N]; x: [T, K]."""
    a = np.maximum(np.abs(x).max(axis=0), 1e-5)
    w = np.maximum(np.abs(weight).max(axis=1), 1e-5)
    return (a**alpha / w ** (1 - alpha)).astype(np.float32)


def awq_scale(weight: np.ndarray, x: np.ndarray, config: WeightQuantConfig) -> np.ndarray:
    """Per-input-channel scales s [K] for weight [K, N] given calibration inputs x [T, K].

    Returns ones when no alpha beats plain round-to-nearest (alpha = 0).
    """
    reference = x @ weight  # [T, N]
    mean = np.abs(x).mean(axis=0)
    best, best_error = np.ones(weight.shape[0], np.float32), np.inf
    for alpha in ALPHAS:
        s = _scales(mean, alpha)
        approx = (x / s) @ dequantize(quantize(weight * s[:, None], config))
        error = float(np.mean((approx - reference) ** 2))
        if error < best_error:
            best, best_error = s, error
    return best
