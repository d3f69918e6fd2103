"""Accuracy metrics for judging a quantized tensor or output against its fp32 reference."""

from __future__ import annotations

import numpy as np


def _pair(approx: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 (so the metric adds no rounding of its own), shapes checked."""
    a, r = np.asarray(approx, np.float64), np.asarray(reference, np.float64)
    if a.shape != r.shape:
        raise ValueError(f"shapes differ: approx {a.shape} vs reference {r.shape}")
    return a, r


def relative_error(approx: np.ndarray, reference: np.ndarray) -> float:
    """||approx - reference||_2 / ||reference||_2 (Frobenius); 0 when both are zero."""
    a, r = _pair(approx, reference)
    err, norm = float(np.linalg.norm(a - r)), float(np.linalg.norm(r))
    return 0.0 if err == 0 else (np.inf if norm == 0 else err / norm)


def max_relative_error(approx: np.ndarray, reference: np.ndarray) -> float:
    """max |approx - reference| / max |reference|: the worst element against the output scale."""
    a, r = _pair(approx, reference)
    err, peak = float(np.abs(a - r).max()), float(np.abs(r).max())
    return 0.0 if err == 0 else (np.inf if peak == 0 else err / peak)


def sqnr_db(reference: np.ndarray, approx: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB; inf when exact. ~6 dB per bit for RTN."""
    a, r = _pair(approx, reference)
    noise, signal = float(np.sum((a - r) ** 2)), float(np.sum(r**2))
    if noise == 0:
        return float("inf")
    return float("-inf") if signal == 0 else 10.0 * float(np.log10(signal / noise))
