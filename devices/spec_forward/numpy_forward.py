"""The numpy forward: embed, block and head computed from the spec and typed weights.

It is the reference backend (ground truth in tests) and the streamed-weights path: every matmul
goes through a pluggable `Linear` kernel, so a block whose weights sit in a window buffer can
run through a kernel reading them in place (e.g. devices/kernels' `NBitsMatMul`). The math is
that of the exported graphs (exporters/arch/llama.py), op for op, with the block features
the spec turns on (edge/architectures.py; Llama's block below):

    x -> RMSNorm -> x @ W_qkv (+ bias) -> rope(q, k) at the step's positions -> write k, v into
    the cache at [position, position + S) -> causal GQA attention -> @ W_o -> + x = r ->
    RMSNorm -> @ W_gate_up -> silu(gate) * up -> @ W_down -> + r

Batch is 1 (edge runs one sequence at a time); the part functions keep the graphs' [1, S, H]
interface so either can stand in for the other.
"""

from __future__ import annotations

import functools
import math
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np

from devices.spec_forward.weights import (
    BlockWeights,
    EmbeddingTable,
    EmbedWeights,
    FloatWeight,
    HeadWeights,
    Int8RowsWeight,
    LinearWeight,
    ModelWeights,
)
from edge.architectures import attention_scale, is_sliding, layer_rope_theta
from edge.errors import ConfigError, ContextOverflowError
from edge.format import ModelSpec
from edge.rope import rope_tables  # re-exported: devices.spec_forward.rope_tables
from quant.blockwise import QuantizedWeight, dequantize

DEFAULT_MAX_CONTEXT = 4096


class Linear(Protocol):
    """A matmul kernel: `x` [M, K] float32 times `weight` ([K, N], float or MatMulNBits) ->
    [M, N] float32. Bias is not its business: the forward adds `weight.bias` itself."""

    def __call__(self, x: np.ndarray, weight: LinearWeight) -> np.ndarray: ...


def round_per_token(x: np.ndarray) -> np.ndarray:
    """`x` [M, K] rounded to int8 per row (scale max|row| / 127, half to even) and scaled back:
    what MatMulInteger's per-token activations hold, so `round_per_token(x) @ (W * scale)`
    equals the graph's integer product up to float rounding."""
    scale = np.maximum(np.abs(x).max(axis=-1, keepdims=True), np.float32(1e-8)) / np.float32(127)
    return np.clip(np.rint(x / scale), -128, 127).astype(np.float32) * scale


def int8_rows_matrix(weight: Int8RowsWeight) -> np.ndarray:
    """The float32 [K, N] matrix int8 rows stand for."""
    return weight.weight.astype(np.float32) * weight.scale


class DequantizingLinear:
    """The reference kernel: float weights as they are; block-quantized and int8-row ones
    dequantized (int8 rows also round `x` per token, as their graphs do), once per weight
    object when `cache` (resident weights). Streamed weights whose buffer is reused need
    `cache=False`: a cached matrix would outlive its bytes.
    """

    def __init__(self, cache: bool = True) -> None:
        self.cache = cache
        self._matrices: weakref.WeakKeyDictionary[LinearWeight, np.ndarray] = (
            weakref.WeakKeyDictionary()
        )

    def matrix(self, weight: LinearWeight) -> np.ndarray:
        """The float32 [K, N] matrix the kernel multiplies by."""
        if isinstance(weight, FloatWeight):
            return weight.weight
        cached = self._matrices.get(weight)
        if cached is None:
            cached = (
                int8_rows_matrix(weight)
                if isinstance(weight, Int8RowsWeight)
                else dequantize(weight.quantized())
            )
            if self.cache:
                self._matrices[weight] = cached
        return cached

    def __call__(self, x: np.ndarray, weight: LinearWeight) -> np.ndarray:
        if isinstance(weight, Int8RowsWeight):
            x = round_per_token(x)
        return x @ self.matrix(weight)


# ---- ops ----------------------------------------------------------------------------------------


def rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """SimplifiedLayerNormalization in float32 (stash_type=1). x: [..., H]."""
    variance = np.mean(np.square(x), axis=-1, keepdims=True, dtype=np.float32)
    return (x / np.sqrt(variance + np.float32(eps))) * weight


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Half rotation (rotary_interleaved=0, Hugging Face's rotate_half). x: [heads, S, D];
    cos, sin: [S, D/2] at the step's positions."""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attention(
    q: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    position: int,
    scale: float | None = None,
    window: int = 0,
) -> np.ndarray:
    """Causal grouped-query attention of a step's queries over the cache.

    q: [H_q, S, D] for positions [position, position + S); keys, values: [H_kv, T, D] with
    T = position + S. Query head h reads kv head h // (H_q / H_kv), as ORT's GQA does.
    `scale`: of the scores (default D^-0.5); `window` > 0: a query sees only the last `window`
    keys, itself included (sliding-window layers). Returns [S, H_q * D].
    """
    hq, s, d = q.shape
    hkv, t, _ = keys.shape
    grouped = q.reshape(hkv, hq // hkv, s, d)  # [H_kv, G, S, D]
    scale = d**-0.5 if scale is None else scale
    scores = grouped @ keys[:, None].swapaxes(-1, -2) * np.float32(scale)  # [H_kv, G, S, T]
    # key j is visible to query i when j <= position + i (and j > position + i - window)
    rows = (position + np.arange(s))[:, None]
    visible = np.arange(t)[None, :] <= rows  # [S, T]
    if window:
        visible &= np.arange(t)[None, :] > rows - window
    scores = np.where(visible, scores, np.float32(-np.inf))
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    probs = scores / scores.sum(axis=-1, keepdims=True)
    out = probs @ values[:, None]  # [H_kv, G, S, D]
    return out.reshape(hq, s, d).transpose(1, 0, 2).reshape(s, hq * d)


def _apply(linear: Linear, x: np.ndarray, weight: LinearWeight) -> np.ndarray:
    out = linear(x, weight)
    return out if weight.bias is None else out + weight.bias


def _rows(x: np.ndarray) -> np.ndarray:
    """[1, S, H] -> [S, H] (batch 1 only)."""
    if x.ndim != 3 or x.shape[0] != 1:
        raise ConfigError(f"the spec forward runs batch 1 as [1, S, H], got {list(x.shape)}")
    return np.ascontiguousarray(x[0], dtype=np.float32)


# ---- parts --------------------------------------------------------------------------------------


def embedding_rows(table: EmbeddingTable, ids: np.ndarray) -> np.ndarray:
    """Rows of `ids` [S] as float32 [S, H]; quantized rows are dequantized (GatherBlockQuantized,
    whose missing zero point is 2**(bits-1) like MatMulNBits')."""
    ids = np.asarray(ids, np.int64).reshape(-1)
    if not table.quantized:
        return np.asarray(table.rows[ids], np.float32)
    assert table.scales is not None and table.bits and table.block_size
    n_blocks = table.scales.shape[1]
    zero = (
        None
        if table.zero_points is None
        else np.ascontiguousarray(table.zero_points[ids]).reshape(-1)
    )
    q = QuantizedWeight(
        np.ascontiguousarray(table.rows[ids]).reshape(len(ids), n_blocks, -1),
        np.ascontiguousarray(table.scales[ids], np.float32).reshape(-1),
        zero,
        table.hidden,
        len(ids),
        table.bits,
        table.block_size,
    )
    return np.ascontiguousarray(dequantize(q).T)  # dequantize gives [K=H, N=S]


def embed_forward(weights: EmbedWeights, ids: np.ndarray) -> np.ndarray:
    """input_ids [1, S] -> hidden [1, S, H], rows times the spec's embedding_scale."""
    rows = embedding_rows(weights.table, ids)
    return (rows if weights.scale == 1.0 else rows * np.float32(weights.scale))[None]


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (transformers' gelu_pytorch_tanh, ORT's FastGelu)."""
    return (
        np.float32(0.5)
        * x
        * (
            np.float32(1.0)
            + np.tanh(np.float32(math.sqrt(2.0 / math.pi)) * (x + np.float32(0.044715) * x * x * x))
        )
    )


ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "silu": lambda gate: gate / (1.0 + np.exp(-gate)),
    "gelu_tanh": gelu_tanh,
}


def layer_rope(
    spec: ModelSpec, layer: int, rope: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """The cos/sin tables of `layer`: `rope` (the spec's base) unless the layer has its own
    base (Gemma 3's sliding layers), whose tables are built here, as long as `rope`'s."""
    theta = layer_rope_theta(spec, layer)
    if theta == spec.rope_theta:
        return rope
    return _tables(replace(spec, rope_theta=theta), rope[0].shape[0])


@functools.lru_cache(maxsize=4)
def _tables(spec: ModelSpec, length: int) -> tuple[np.ndarray, np.ndarray]:
    return rope_tables(spec, length)  # built once per (spec, length), not once per step


def block_forward(
    spec: ModelSpec,
    weights: BlockWeights,
    x: np.ndarray,
    keys: np.ndarray,
    values: np.ndarray,
    position: int,
    rope: tuple[np.ndarray, np.ndarray],
    linear: Linear | None = None,
) -> np.ndarray:
    """One block: hidden [1, S, H] -> [1, S, H]; the step's keys and values are written into
    `keys`/`values` [1, H_kv, max_context, D] at [position, position + S), in place. `rope`:
    the tables of the spec's base (the runtime's); layers with another base get their own."""
    linear = linear or DequantizingLinear()
    rows = _rows(x)
    s, d = rows.shape[0], spec.head_dim
    hq, hkv = spec.num_heads, spec.num_kv_heads
    if position + s > keys.shape[2]:
        raise ContextOverflowError(
            f"{position} cached + {s} new tokens exceed the KV cache of {keys.shape[2]}"
        )
    qkv = _apply(linear, rms_norm(rows, weights.attn_norm, spec.rms_norm_eps), weights.qkv)
    q = qkv[:, : hq * d].reshape(s, hq, d).transpose(1, 0, 2)  # [H_q, S, D]
    k = qkv[:, hq * d : (hq + hkv) * d].reshape(s, hkv, d).transpose(1, 0, 2)  # [H_kv, S, D]
    v = qkv[:, (hq + hkv) * d :].reshape(s, hkv, d).transpose(1, 0, 2)
    if spec.qk_norm:  # per head, over D
        assert weights.q_norm is not None and weights.k_norm is not None
        q = rms_norm(q, weights.q_norm, spec.rms_norm_eps)
        k = rms_norm(k, weights.k_norm, spec.rms_norm_eps)
    cos, sin = (table[position : position + s] for table in layer_rope(spec, weights.index, rope))
    end = position + s
    keys[0, :, position:end] = apply_rope(k, cos, sin)
    values[0, :, position:end] = v
    window = spec.sliding_window if is_sliding(spec, weights.index) else 0
    attn = attention(
        apply_rope(q, cos, sin),
        keys[0, :, :end],
        values[0, :, :end],
        position,
        attention_scale(spec),
        window,
    )
    projected = _apply(linear, attn, weights.attn_output)
    if spec.sandwich_norms:
        assert weights.post_attention_norm is not None
        projected = rms_norm(projected, weights.post_attention_norm, spec.rms_norm_eps)
    residual = rows + projected
    gate_up = _apply(
        linear, rms_norm(residual, weights.ffn_norm, spec.rms_norm_eps), weights.gate_up
    )
    gate, up = np.split(gate_up, 2, axis=-1)
    down = _apply(linear, ACTIVATIONS[spec.activation](gate) * up, weights.down)
    if spec.sandwich_norms:
        assert weights.post_ffw_norm is not None
        down = rms_norm(down, weights.post_ffw_norm, spec.rms_norm_eps)
    return (residual + down)[None]


def head_forward(
    spec: ModelSpec,
    weights: HeadWeights,
    x: np.ndarray,
    logits_index: Sequence[int] | np.ndarray,
    linear: Linear | None = None,
) -> np.ndarray:
    """hidden [1, S, H] -> logits [1, K, V] at the K positions in `logits_index`."""
    linear = linear or DequantizingLinear()
    picked = _rows(x)[np.asarray(logits_index, np.int64)]  # [K, H]
    normed = rms_norm(picked, weights.norm, spec.rms_norm_eps)
    return _apply(linear, normed, weights.output)[None]


# ---- a whole model ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardConfig:
    """`max_context`: KV cache length (None: min(4096, the model's maximum))."""

    max_context: int | None = None

    def __post_init__(self) -> None:
        if self.max_context is not None and self.max_context < 1:
            raise ConfigError(f"ForwardConfig.max_context={self.max_context}; must be >= 1")

    def context(self, spec: ModelSpec) -> int:
        return self.max_context or min(DEFAULT_MAX_CONTEXT, spec.max_position_embeddings)


class StepRunner:
    """prefill/decode bookkeeping shared by the numpy and torch models (like edge's Engine)."""

    max_context: int
    position: int = 0

    def _forward(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        """Run `ids` [S] at `self.position`; logits [S or 1, V] float32 (numpy)."""
        raise NotImplementedError

    def prefill(
        self, token_ids: Sequence[int] | np.ndarray, all_logits: bool = False
    ) -> np.ndarray:
        """Feed tokens; logits [S, V] for every position, or [1, V] for the last."""
        ids = np.asarray(token_ids, np.int64).reshape(-1)
        self._check_room(len(ids))
        logits = self._forward(ids, all_logits)
        self.position += len(ids)
        return logits

    def decode(self, token_id: int) -> np.ndarray:
        """Feed one token; its next-token logits [V]."""
        return self.prefill([token_id])[0]

    def reset(self) -> None:
        self.position = 0

    def rewind(self, position: int) -> None:
        """Forget tokens from `position` on; later steps overwrite the stale cache tail."""
        if not 0 <= position <= self.position:
            raise ValueError(f"cannot rewind to {position}; the cache holds {self.position}")
        self.position = position

    def _check_room(self, n: int) -> None:
        if n < 1:
            raise ValueError("no tokens to run")
        if self.position + n > self.max_context:
            raise ContextOverflowError(
                f"{self.position} tokens in context + {n} new exceed the "
                f"context window of {self.max_context} tokens"
            )


class NumpyForward(StepRunner):
    """A whole package run by the numpy forward; the numpy reference of edge's Engine.

    >>> model = NumpyForward(load_model_weights(open_package("smollm2-pkg")))  # doctest: +SKIP
    >>> logits = model.prefill([1, 2, 3])  # [1, V]
    >>> logits = model.decode(int(logits[0].argmax()))  # [V]
    """

    def __init__(
        self,
        weights: ModelWeights,
        config: ForwardConfig | None = None,
        linear: Linear | None = None,
    ) -> None:
        spec = self.spec = weights.spec
        self.weights = weights
        self.linear = linear or DequantizingLinear()
        self.max_context = (config or ForwardConfig()).context(spec)
        self.rope = rope_tables(spec, self.max_context)
        shape = (1, spec.num_kv_heads, self.max_context, spec.head_dim)
        self.keys = [np.zeros(shape, np.float32) for _ in range(spec.num_layers)]
        self.values = [np.zeros(shape, np.float32) for _ in range(spec.num_layers)]
        self.position = 0

    def _forward(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        x = embed_forward(self.weights.embed, ids)
        for block, keys, values in zip(self.weights.blocks, self.keys, self.values):
            x = block_forward(
                self.spec, block, x, keys, values, self.position, self.rope, self.linear
            )
        index = np.arange(len(ids)) if all_logits else np.array([len(ids) - 1])
        return head_forward(self.spec, self.weights.head, x, index, self.linear)[0]
