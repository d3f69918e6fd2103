"""Real activations for calibrated quantization: a float32 numpy forward of the block the
spec declares (Llama's, plus the features edge/architectures.py turns on).

Calibration runs block by block alongside the export, so memory stays at one block: the hidden
states of the calibration text enter block i, the inputs of its four matmuls are recorded, and
the block's float32 output becomes block i+1's input. This is the reference math of the ONNX
graphs (RMSNorm, half-rotation rope, causal grouped-query attention, SwiGLU) in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from devices.spec_forward.numpy_forward import ACTIVATIONS
from edge.architectures import (
    QK_NORMS,
    SANDWICH_NORMS,
    attention_scale,
    is_sliding,
    layer_rope_theta,
)
from edge.format import ModelSpec
from edge.rope import rope_tables


@dataclass
class BlockActivations:
    """Inputs [T, K] of one block's matmuls on the calibration text."""

    attn_qkv: np.ndarray
    attn_output: np.ndarray
    ffn_gate_up: np.ndarray
    ffn_down: np.ndarray


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def _rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    # x: [H, T, D]; cos/sin: [T, D/2]
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)


def attention(
    qkv: np.ndarray, spec: ModelSpec, vectors: dict[str, np.ndarray] | None = None, i: int = 0
) -> np.ndarray:
    """Causal grouped-query attention with rope of block i. qkv: [T, (H + 2 H_kv) D] -> [T, H D].
    `vectors`: the block's q/k norms where the spec has them."""
    t, d = qkv.shape[0], spec.head_dim
    hq, hkv = spec.num_heads, spec.num_kv_heads
    q = qkv[:, : hq * d].reshape(t, hq, d).transpose(1, 0, 2)  # [H, T, D]
    k = qkv[:, hq * d : (hq + hkv) * d].reshape(t, hkv, d).transpose(1, 0, 2)
    v = qkv[:, (hq + hkv) * d :].reshape(t, hkv, d).transpose(1, 0, 2)
    if spec.qk_norm:
        assert vectors is not None
        q_norm, k_norm = (vectors[f"blk.{i}.{n}"] for n in QK_NORMS)
        q, k = rms_norm(q, q_norm, spec.rms_norm_eps), rms_norm(k, k_norm, spec.rms_norm_eps)
    cos, sin = rope_tables(replace(spec, rope_theta=layer_rope_theta(spec, i)), t)
    q, k = _rope(q, cos, sin), _rope(k, cos, sin)
    k, v = np.repeat(k, hq // hkv, axis=0), np.repeat(v, hq // hkv, axis=0)
    scores = q @ k.transpose(0, 2, 1) * attention_scale(spec)  # [H, T, T]
    scores += np.triu(np.full((t, t), -np.inf, np.float32), 1)
    if is_sliding(spec, i):  # key j visible to query i only when i - j < window
        scores += np.tril(np.full((t, t), -np.inf, np.float32), -spec.sliding_window)
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    return (probs @ v).transpose(1, 0, 2).reshape(t, hq * d)


def block_forward(
    x: np.ndarray,
    spec: ModelSpec,
    vectors: dict[str, np.ndarray],
    linears: dict[str, np.ndarray],
    i: int,
) -> tuple[np.ndarray, BlockActivations]:
    """One block on hidden states x [T, H]; `linears` are float32 [K, N] (x @ W)."""
    p = f"blk.{i}."
    normed = rms_norm(x, vectors[p + "attn_norm.weight"], spec.rms_norm_eps)
    qkv = normed @ linears[p + "attn_qkv.weight"]
    if spec.attention_bias:
        qkv = qkv + vectors[p + "attn_qkv.bias"]
    attn = attention(qkv, spec, vectors, i)
    projected = attn @ linears[p + "attn_output.weight"]
    if spec.sandwich_norms:
        projected = rms_norm(projected, vectors[p + SANDWICH_NORMS[0]], spec.rms_norm_eps)
    h = x + projected
    normed2 = rms_norm(h, vectors[p + "ffn_norm.weight"], spec.rms_norm_eps)
    gate, up = np.split(normed2 @ linears[p + "ffn_gate_up.weight"], 2, axis=-1)
    act = ACTIVATIONS[spec.activation](gate) * up
    down = act @ linears[p + "ffn_down.weight"]
    if spec.sandwich_norms:
        down = rms_norm(down, vectors[p + SANDWICH_NORMS[1]], spec.rms_norm_eps)
    out = h + down
    return out.astype(np.float32), BlockActivations(normed, attn, normed2, act)
