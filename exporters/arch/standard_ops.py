"""Fixed-shape block and head graphs made of standard ONNX ops only, for NPU compilers.

ONNX Runtime's contrib ops (GroupQueryAttention, SimplifiedLayerNormalization) exist in no NPU
provider, so `q-static-int8` with `static_ops="standard"` writes each block as plain ops
(shapes for a step of S tokens, a cache of C slots, H_kv key/value heads of G queries each):

    x [1,S,H] -> RMSNorm (Mul, ReduceMean, Add, Sqrt, Div, Mul) -> QDQ MatMul(W_qkv)
    -> Slice q, k, v -> rope (Slice, Mul, Sub, Add, Concat) -> attention over the C cached
    keys and the S new ones (QDQ MatMul, Concat, Add bias, Softmax, QDQ MatMul)
    -> QDQ MatMul(W_o) -> + x -> RMSNorm -> QDQ MatMul(W_gate_up) -> Slice
    -> gate * Sigmoid(gate) * up -> QDQ MatMul(W_down) -> + residual

The cache is updated outside the graph: a block reads the whole cache (fixed C) and outputs
only the step's keys/values ([1, H_kv, S, D], `new_key.N`), which the engine writes at their
positions. An in-graph update would need ScatterND (in neither NNAPI's nor CoreML's op list) or
a one-hot product, and would make every step write the whole C-slot cache back (30 layers x
2 x 3 heads x 1024 x 64 floats = 47 MB a SmolLM2 token) instead of S rows. The additive mask
[S, C + S] and the step's rope rows [S, D/2] come from the host too (`edge.static_steps`), so
the graph holds no integer index arithmetic, Gather or comparison, which NPU compilers handle
worst. Attention scores against the cache and against the new keys are two products joined
before the softmax: the cache is never concatenated (copied) with the new keys. Query heads
are grouped per key/value head by Reshape/Transpose ([H_kv, G S, D] against [H_kv, C, D]):
no Expand or Tile (neither is in NNAPI's list) and no G-fold copy of the cache. Every MatMul
reads both operands through QuantizeLinear/DequantizeLinear (the probabilities on [0, 1]), as
integer-only NPUs (Hexagon HTP, NNAPI) need. The attention products' Q/DQ may be wider than
the linear layers' (`StandardBlock.attention_bits`, `--attention-bits`): 16 over 8-bit linear
layers is the mixed precision Qualcomm runs LLMs at on its HTP (8-bit queries, keys and
probabilities are what puts A8W8 standard graphs behind the float-attention contrib ones,
BENCHMARKS.md); 16-bit activations are uint16, which QNN takes and NNAPI (uint8) does not.
The head computes the logits of all S positions: a fixed count, no Shape-derived dimension.
`static-fp32` packages are these graphs with float32 weights and no Q/DQ at all, for CoreML
(its op list has no Q/DQ; the Neural Engine is float16).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from edge import format as fmt
from edge.architectures import QKV_BIAS, attention_scale
from edge.format import ModelSpec, TensorEntry
from edge.rope import rope_tables
from exporters.arch.llama import GraphDims, LlamaArchitecture
from exporters.arch.llama import qdq as quantized
from exporters.linear import FloatLinear, Linear, QDQLinear, RowInt8
from exporters.onnx_graph import GraphBuilder

FLOAT = TensorProto.FLOAT
FLOAT_BITS = 32  # activation_bits of the float variant: no QuantizeLinear/DequantizeLinear
PROBABILITIES = (0.0, 1.0)
Range = tuple[float, float]


@dataclass(frozen=True)
class AttentionRanges:
    """Calibrated ranges of the attention products' inputs: queries (rotated and scaled),
    keys (rotated; cached ones share the grid) and values."""

    q: Range
    k: Range
    v: Range


def attention_ranges(qkv: np.ndarray, spec: ModelSpec) -> AttentionRanges:
    """Ranges of q (rotated, times the softmax scale), k (rotated) and v on calibration
    activations qkv [T, (H_q + 2 H_kv) D], positions 0..T-1 (as `calibration.attention`)."""
    t, d, hq, hkv = qkv.shape[0], spec.head_dim, spec.num_heads, spec.num_kv_heads
    cos, sin = rope_tables(spec, t)
    q = qkv[:, : hq * d].reshape(t, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].reshape(t, hkv, d)
    v = qkv[:, (hq + hkv) * d :]

    def rotated(x: np.ndarray) -> np.ndarray:  # x: [T, heads, D]; cos/sin: [T, 1, D/2]
        a, b = x[..., : d // 2], x[..., d // 2 :]
        c, s = cos[:, None], sin[:, None]
        return np.concatenate([a * c - b * s, b * c + a * s], axis=-1)

    q = rotated(q) * attention_scale(spec)
    k = rotated(k)
    return AttentionRanges(*((float(x.min()), float(x.max())) for x in (q, k, v)))


@dataclass(frozen=True)
class StandardBlock:
    """What one block graph is built from."""

    spec: ModelSpec
    index: int
    vectors: dict[str, TensorEntry]
    linears: dict[str, Linear]
    attention: AttentionRanges
    activation_bits: int  # the linear layers' inputs
    # the attention products' operands: 16 with 8-bit linear layers is Qualcomm's mixed
    # precision for LLMs on its HTP (8-bit queries, keys and probabilities cost most)
    attention_bits: int | None = None  # None: activation_bits


class StandardOpsGraphs:
    """The standard-op graphs of a static package: the block and head; the embedding is the
    Llama graph's int8 Gather (Gather, Cast, Unsqueeze, Mul), standard already."""

    def block_graph(self, block: StandardBlock, dims: GraphDims) -> onnx.ModelProto:
        spec, i = block.spec, block.index
        assert isinstance(dims.seq, int) and isinstance(dims.max_context, int), dims
        s, c, d = dims.seq, dims.max_context, spec.head_dim
        hq, hkv, h = spec.num_heads, spec.num_kv_heads, spec.hidden_size
        g = GraphBuilder(f"block.{i}")
        x = g.input(fmt.hidden_name(i), FLOAT, [1, s, h])
        cache_shape = [1, hkv, c, d]
        past_k = g.input(fmt.past_key_name(i), FLOAT, cache_shape)
        past_v = g.input(fmt.past_value_name(i), FLOAT, cache_shape)
        bias = g.input(fmt.STEP_MASK, FLOAT, [s, c + s])
        cos = g.input(fmt.STEP_COS, FLOAT, [s, d // 2])
        sin = g.input(fmt.STEP_SIN, FLOAT, [s, d // 2])
        # the attention products' Q/DQ bits; the linear layers' are in their QDQLinear
        bits = block.attention_bits or block.activation_bits

        def weight(name: str) -> str:
            return g.weight(block.vectors[f"blk.{i}.{name}"])

        def linear(x: str, name: str) -> str:
            w = block.linears[f"blk.{i}.{name}"]
            floats = block.activation_bits == FLOAT_BITS
            assert isinstance(w, FloatLinear if floats else QDQLinear), type(w)
            return LlamaArchitecture.linear(g, x, w)

        def qdq(g: GraphBuilder, x: str, value_range: Range, bits: int) -> str:
            return x if bits == FLOAT_BITS else quantized(g, x, value_range, bits)

        qkv = linear(
            rms_norm(g, x, weight("attn_norm.weight"), spec.rms_norm_eps), "attn_qkv.weight"
        )
        if spec.attention_bias:
            qkv = g.op1("Add", [qkv, weight(QKV_BIAS)])
        # qkv [1, S, (H_q + 2 H_kv) D] -> q [S, H_q, D], k and v [S, H_kv, D]
        bounds = np.cumsum([0, hq * d, hkv * d, hkv * d])
        q, k, v = (
            g.op1(
                "Reshape",
                [slice_last(g, qkv, int(a), int(b)), g.constant("heads", np.array([s, n, d]))],
            )
            for a, b, n in zip(bounds[:-1], bounds[1:], (hq, hkv, hkv), strict=True)
        )
        axis1 = g.constant("axis1", np.array([1]))
        cos, sin = g.op1("Unsqueeze", [cos, axis1]), g.op1("Unsqueeze", [sin, axis1])  # [S,1,D/2]
        q = g.op1(
            "Mul",
            [
                rotate_half(g, q, cos, sin, d),
                g.constant("scale", np.array(attention_scale(spec), np.float32)),
            ],
        )
        k = rotate_half(g, k, cos, sin, d)
        heads_first = (1, 0, 2)
        k_new = g.op1("Transpose", [k], perm=heads_first)  # [H_kv, S, D]
        v_new = g.op1("Transpose", [v], perm=heads_first)
        step_shape = g.constant("step_kv", np.array([1, hkv, s, d]))
        g.op("Reshape", [k_new, step_shape], outputs=[fmt.new_key_name(i)])
        g.op("Reshape", [v_new, step_shape], outputs=[fmt.new_value_name(i)])

        ranges = block.attention
        # queries grouped by the key/value head they read: [S, H_q, D] -> [H_kv, G S, D]
        group = hq // hkv
        grouped = g.op1("Reshape", [q, g.constant("groups", np.array([s, hkv, group, d]))])
        grouped = g.op1("Transpose", [grouped], perm=(1, 2, 0, 3))
        grouped = qdq(
            g,
            g.op1("Reshape", [grouped, g.constant("gs", np.array([hkv, group * s, d]))]),
            ranges.q,
            bits,
        )
        cached = g.constant("cached", np.array([hkv, c, d]))
        past_k = qdq(g, g.op1("Reshape", [past_k, cached]), ranges.k, bits)
        past_v = qdq(g, g.op1("Reshape", [past_v, cached]), ranges.v, bits)
        transposed = (0, 2, 1)
        scores = g.op1(
            "Concat",
            [
                g.op1("MatMul", [grouped, g.op1("Transpose", [past_k], perm=transposed)]),
                g.op1(
                    "MatMul",
                    [grouped, g.op1("Transpose", [qdq(g, k_new, ranges.k, bits)], perm=transposed)],
                ),
            ],
            axis=-1,
        )  # [H_kv, G S, C + S]
        if group > 1:  # the mask's rows [S, C + S] once per query of a group
            bias = g.op1("Concat", [bias] * group, axis=0)
        probs = g.op1("Softmax", [g.op1("Add", [scores, bias])], axis=-1)
        attn = g.op1(
            "Add",
            [
                g.op1("MatMul", [qdq(g, slice_last(g, probs, 0, c), PROBABILITIES, bits), past_v]),
                g.op1(
                    "MatMul",
                    [
                        qdq(g, slice_last(g, probs, c, c + s), PROBABILITIES, bits),
                        qdq(g, v_new, ranges.v, bits),
                    ],
                ),
            ],
        )  # [H_kv, G S, D] -> [1, S, H_q D]
        attn = g.op1("Reshape", [attn, g.constant("ungroup", np.array([hkv, group, s, d]))])
        attn = g.op1("Transpose", [attn], perm=(2, 0, 1, 3))
        attn = g.op1("Reshape", [attn, g.constant("merged", np.array([1, s, hq * d]))])
        residual = g.op1("Add", [x, linear(attn, "attn_output.weight")])
        normed = rms_norm(g, residual, weight("ffn_norm.weight"), spec.rms_norm_eps)
        gate_up = linear(normed, "ffn_gate_up.weight")
        f = spec.intermediate_size
        gate, up = slice_last(g, gate_up, 0, f), slice_last(g, gate_up, f, 2 * f)
        act = g.op1("Mul", [g.op1("Mul", [gate, g.op1("Sigmoid", [gate])]), up])
        g.op("Add", [residual, linear(act, "ffn_down.weight")], outputs=[fmt.hidden_name(i + 1)])

        g.output(fmt.hidden_name(i + 1), FLOAT, [1, s, h])
        g.output(fmt.new_key_name(i), FLOAT, [1, hkv, s, d])
        g.output(fmt.new_value_name(i), FLOAT, [1, hkv, s, d])
        return g.model()

    def head_graph(
        self, spec: ModelSpec, norm: TensorEntry, output: RowInt8 | TensorEntry, dims: GraphDims
    ) -> onnx.ModelProto:
        """Logits of every position of the step: [1, S, V], a fixed count (the engine keeps
        the rows it wants). Int8 rows [V, H] behind DequantizeLinear (or float32 rows, in the
        float variant), read by Gemm(transB)."""
        assert isinstance(dims.seq, int), dims
        s, h, vocab = dims.seq, spec.hidden_size, spec.vocab_size
        g = GraphBuilder("head")
        x = g.input(fmt.hidden_name(spec.num_layers), FLOAT, [1, s, h])
        normed = rms_norm(g, x, g.weight(norm), spec.rms_norm_eps)
        flat = g.op1("Reshape", [normed, g.constant("rows", np.array([s, h]))])
        if isinstance(output, TensorEntry):
            rows = g.weight(output)
        else:
            flat = quantized(g, flat, output.input_range, output.activation_bits)
            rows = g.op1(
                "DequantizeLinear", [g.weight(output.weight), g.weight(output.scale)], axis=0
            )
        logits = g.op1("Gemm", [flat, rows], transB=1)  # [S, V]
        g.op(
            "Reshape", [logits, g.constant("logits", np.array([1, s, vocab]))], outputs=[fmt.LOGITS]
        )
        g.output(fmt.LOGITS, FLOAT, [1, s, vocab])
        return g.model()


def rms_norm(g: GraphBuilder, x: str, weight: str, eps: float) -> str:
    """x / sqrt(mean(x^2) + eps) * weight over the last axis, float32 throughout."""
    mean = g.op1(
        "ReduceMean", [g.op1("Mul", [x, x]), g.constant("last", np.array([-1]))], keepdims=1
    )
    root = g.op1("Sqrt", [g.op1("Add", [mean, g.constant("eps", np.array(eps, np.float32))])])
    return g.op1("Mul", [g.op1("Div", [x, root]), weight])


def slice_last(g: GraphBuilder, x: str, start: int, end: int) -> str:
    """x[..., start:end]: Slice, which every NPU op list has (Split is not in NNAPI's)."""
    return g.op1(
        "Slice",
        [
            x,
            g.constant("start", np.array([start])),
            g.constant("end", np.array([end])),
            g.constant("last", np.array([-1])),
        ],
    )


def rotate_half(g: GraphBuilder, x: str, cos: str, sin: str, d: int) -> str:
    """Hugging Face's half rotation of x [S, heads, D] by cos/sin [S, 1, D/2]."""
    x1, x2 = slice_last(g, x, 0, d // 2), slice_last(g, x, d // 2, d)
    return g.op1(
        "Concat",
        [
            g.op1("Sub", [g.op1("Mul", [x1, cos]), g.op1("Mul", [x2, sin])]),
            g.op1("Add", [g.op1("Mul", [x2, cos]), g.op1("Mul", [x1, sin])]),
        ],
        axis=-1,
    )
