"""Llama-family decoder (SmolLM2, Llama 2/3): spec, weight layout and per-part ONNX graphs.

Graph layout of one block (shapes for batch B, step length S, hidden H):

    x [B,S,H] -> RMSNorm -> MatMul(W_qkv) -> GroupQueryAttention (rotary inside, KV cache
    shared in place) -> MatMul(W_o) -> residual + RMSNorm (one fused op) -> MatMul(W_gate_up)
    -> SiLU(gate) * up -> MatMul(W_down) -> + residual -> [B,S,H]

Q, K and V (and gate and up) are stored fused so a decode step runs four matmuls, not seven.
Other architectures are this graph with the block features their spec turns on (q/k norm,
sandwich norms, GELU, scaled embeddings, sliding-window layers with their own rope base: see
edge/architectures.py and gemma3.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import TensorProto

from edge import format as fmt
from edge.architectures import (
    LLAMA,
    QK_NORMS,
    QKV_BIAS,
    SANDWICH_NORMS,
    Declaration,
    attention_scale,
    block_vector_names,
    is_sliding,
    layer_rope_theta,
)
from edge.format import ModelSpec, TensorEntry
from exporters.linear import (
    FloatLinear,
    Int8RowLinear,
    Linear,
    QDQLinear,
    QuantLinear,
    RowInt8,
    RowWeight,
    activation_grid,
    concat,
    permute,
)
from exporters.onnx_graph import GraphBuilder
from exporters.sources.base import Source

FLOAT = TensorProto.FLOAT


@dataclass(frozen=True)
class GraphDims:
    """Graph dimensions: symbolic (any length) or fixed, as NPU compilers need them."""

    batch: int | str = "batch"
    seq: int | str = "seq"
    max_context: int | str = "max_context"


DYNAMIC = GraphDims()


class LlamaArchitecture:
    """The `llama` architecture's graphs and weight layout; what differs between architectures
    is their `Declaration` (edge/architectures.py), which the spec carries into
    the graphs (see qwen2.py, gemma3.py)."""

    declaration: ClassVar[Declaration] = LLAMA

    @property
    def name(self) -> str:
        return self.declaration.name

    # ---- spec --------------------------------------------------------------------------------
    def spec(self, config: dict[str, Any]) -> ModelSpec:
        """Hyper-parameters from a Hugging Face style config dict."""
        return self.declaration.spec(config)

    # ---- weights ----------------------------------------------------------------------------
    def head_tensor(self, source: Source) -> str:
        """The output matrix [V, H]; tied models reuse the token embedding."""
        return "output.weight" if source.has("output.weight") else "token_embd.weight"

    def block_vectors(self, source: Source, spec: ModelSpec, i: int) -> dict[str, np.ndarray]:
        """Norm weights (and Q/K/V biases): small, always float32."""
        vectors = {
            n: source.read(f"blk.{i}.{n}") for n in block_vector_names(spec) if n != QKV_BIAS
        }
        if spec.attention_bias:
            vectors[QKV_BIAS] = np.concatenate(
                [source.read(f"blk.{i}.attn_{x}.bias") for x in "qkv"]
            )
        return {f"blk.{i}.{k}": np.ascontiguousarray(v, np.float32) for k, v in vectors.items()}

    def block_linears(self, source: Source, spec: ModelSpec, i: int) -> dict[str, RowWeight]:
        """One block's matmul weights, rows = outputs, Q/K/V and gate/up fused."""

        def rows(name: str) -> RowWeight:
            return source.read_rows(f"blk.{i}.{name}")

        q, k = rows("attn_q.weight"), rows("attn_k.weight")
        if source.kind == "gguf" and self.declaration.gguf_permutes_qk:
            q = permute(q, rope_row_order(q.n_rows, spec.num_heads))
            k = permute(k, rope_row_order(k.n_rows, spec.num_kv_heads))
        linears = {
            "attn_qkv.weight": concat([q, k, rows("attn_v.weight")]),
            "attn_output.weight": rows("attn_output.weight"),
            "ffn_gate_up.weight": concat([rows("ffn_gate.weight"), rows("ffn_up.weight")]),
            "ffn_down.weight": rows("ffn_down.weight"),
        }
        return {f"blk.{i}.{k}": v for k, v in linears.items()}

    # ---- graphs ------------------------------------------------------------------------------
    def embed_graph(
        self, spec: ModelSpec, embed: TensorEntry | QuantLinear | RowInt8, dims: GraphDims = DYNAMIC
    ) -> onnx.ModelProto:
        g = GraphBuilder("embed")
        ids = g.input(fmt.INPUT_IDS, TensorProto.INT64, [dims.batch, dims.seq])
        scaled = spec.embedding_scale != 1.0
        out = [g.fresh("rows") if scaled else fmt.hidden_name(0)]
        if isinstance(embed, TensorEntry):
            g.op("Gather", [g.weight(embed), ids], outputs=out, axis=0)
        elif isinstance(embed, RowInt8):  # plain ops: int8 rows times their scale
            rows = g.op1(
                "Cast",
                [g.op1("Gather", [g.weight(embed.weight), ids], axis=0)],
                to=TensorProto.FLOAT,
            )
            scale = g.op1(
                "Unsqueeze",
                [
                    g.op1("Gather", [g.weight(embed.scale), ids], axis=0),
                    g.constant("last", np.array([-1])),
                ],
            )
            g.op("Mul", [rows, scale], outputs=out)
        else:  # rows dequantized on the fly: [V, H * bits / 8] blocks -> [B, S, H] float32
            inputs = [g.weight(embed.packed), ids, g.weight(embed.scales)]
            if embed.zero_points is not None:
                inputs.append(g.weight(embed.zero_points))
            g.op(
                "GatherBlockQuantized",
                inputs,
                outputs=out,
                domain="com.microsoft",
                gather_axis=0,
                quantize_axis=1,
                block_size=embed.block_size,
                bits=embed.bits,
            )
        if scaled:  # rows [B, S, H] times sqrt(H) (Gemma), a float32 constant as in transformers
            g.op(
                "Mul",
                [out[0], g.constant("embed_scale", np.array(spec.embedding_scale, np.float32))],
                outputs=[fmt.hidden_name(0)],
            )
        g.output(fmt.hidden_name(0), FLOAT, [dims.batch, dims.seq, spec.hidden_size])
        return g.model()

    def block_graph(
        self,
        spec: ModelSpec,
        i: int,
        vectors: dict[str, TensorEntry],
        linears: dict[str, Linear],
        dims: GraphDims = DYNAMIC,
    ) -> onnx.ModelProto:
        g = GraphBuilder(f"block.{i}")
        h, d = spec.hidden_size, spec.head_dim
        x = g.input(fmt.hidden_name(i), FLOAT, [dims.batch, dims.seq, h])
        cache_shape = [dims.batch, spec.num_kv_heads, dims.max_context, d]
        past_k = g.input(fmt.past_key_name(i), FLOAT, cache_shape)
        past_v = g.input(fmt.past_value_name(i), FLOAT, cache_shape)
        seqlens = g.input(fmt.SEQLENS_K, TensorProto.INT32, [dims.batch])
        total = g.input(fmt.TOTAL_SEQUENCE_LENGTH, TensorProto.INT32, [])
        cos = g.input(fmt.COS_CACHE, FLOAT, [dims.max_context, d // 2])
        sin = g.input(fmt.SIN_CACHE, FLOAT, [dims.max_context, d // 2])

        def weight(name: str) -> str:
            return g.weight(vectors[f"blk.{i}.{name}"])

        def linear(x: str, name: str) -> str:
            return self.linear(g, x, linears[f"blk.{i}.{name}"])

        def norm(x: str, name: str) -> str:  # RMSNorm over the last axis, float32 statistics
            return g.op1(
                "SimplifiedLayerNormalization",
                [x, weight(name)],
                axis=-1,
                epsilon=spec.rms_norm_eps,
                stash_type=1,
            )

        normed = norm(x, "attn_norm.weight")
        qkv = linear(normed, "attn_qkv.weight")
        if spec.attention_bias:
            qkv = g.op1("Add", [qkv, weight(QKV_BIAS)])
        # qkv: [B, S, (H_q + 2 H_kv) * D]; the cache [B, H_kv, max_context, D] is updated in place
        rotary = 1
        if spec.qk_norm or layer_rope_theta(spec, i) != spec.rope_theta:
            q, k, v = g.op(
                "Split",
                [
                    qkv,
                    g.constant(
                        "qkv_split",
                        np.array(
                            [spec.num_heads * d, spec.num_kv_heads * d, spec.num_kv_heads * d]
                        ),
                    ),
                ],
                3,
                axis=-1,
            )
            q, k, rotary = self._heads(g, spec, i, q, k, total, weight)
            attention_in = [q, k, v]
        else:
            attention_in = [qkv, "", ""]
        # local_window_size = the sliding window as transformers counts it (the query itself
        # included): checked against Gemma3 on a 4-key window (tests/exporters/test_parity_gemma3)
        window = {"local_window_size": spec.sliding_window} if is_sliding(spec, i) else {}
        attn = g.op(
            "GroupQueryAttention",
            [*attention_in, past_k, past_v, seqlens, total, cos, sin],
            outputs=[g.fresh("attn"), fmt.present_key_name(i), fmt.present_value_name(i)],
            domain="com.microsoft",
            num_heads=spec.num_heads,
            kv_num_heads=spec.num_kv_heads,
            do_rotary=rotary,
            rotary_interleaved=0,
            scale=attention_scale(spec),
            **window,
        )[0]
        projected = linear(attn, "attn_output.weight")
        if spec.sandwich_norms:
            projected = norm(projected, SANDWICH_NORMS[0])
        normed2, _, _, residual = g.op(
            "SkipSimplifiedLayerNormalization",
            [x, projected, weight("ffn_norm.weight")],
            4,
            domain="com.microsoft",
            epsilon=spec.rms_norm_eps,
        )
        gate_up = linear(normed2, "ffn_gate_up.weight")
        gate, up = g.op("Split", [gate_up], 2, axis=-1, num_outputs=2)
        if spec.activation == "gelu_tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
            act = g.op1("Mul", [g.op1("FastGelu", [gate], domain="com.microsoft"), up])
        else:
            act = g.op1("Mul", [g.op1("Mul", [gate, g.op1("Sigmoid", [gate])]), up])
        down = linear(act, "ffn_down.weight")
        if spec.sandwich_norms:
            down = norm(down, SANDWICH_NORMS[1])
        g.op("Add", [residual, down], outputs=[fmt.hidden_name(i + 1)])

        g.output(fmt.hidden_name(i + 1), FLOAT, [dims.batch, dims.seq, h])
        g.output(fmt.present_key_name(i), FLOAT, cache_shape)
        g.output(fmt.present_value_name(i), FLOAT, cache_shape)
        return g.model()

    @staticmethod
    def _heads(
        g: GraphBuilder,
        spec: ModelSpec,
        i: int,
        q: str,
        k: str,
        total: str,
        weight: Callable[[str], str],
    ) -> tuple[str, str, int]:
        """Per-head RMSNorm of q [B, S, H_q * D] and k [B, S, H_kv * D] (when the spec has
        it), and their rotation here when this layer's rope base is not the one of the tables
        the runtime feeds GroupQueryAttention (Gemma 3's sliding layers). Returns q, k and
        GroupQueryAttention's do_rotary."""
        d = spec.head_dim
        heads = {"q": (q, spec.num_heads), "k": (k, spec.num_kv_heads)}
        split = {
            n: g.op1("Reshape", [x, g.constant(f"{n}_heads", np.array([0, 0, n_h, d]))])
            for n, (x, n_h) in heads.items()
        }  # [B, S, heads, D]
        if spec.qk_norm:
            split = {
                n: g.op1(
                    "SimplifiedLayerNormalization",
                    [x, weight(name)],
                    axis=-1,
                    epsilon=spec.rms_norm_eps,
                    stash_type=1,
                )
                for (n, x), name in zip(split.items(), QK_NORMS, strict=True)
            }
        theta = layer_rope_theta(spec, i)
        rotary = int(theta == spec.rope_theta)
        if not rotary:  # positions [total - S, total) of this step: angles [S, 1, D/2]
            end = g.op1("Cast", [total], to=TensorProto.INT64)
            steps = g.op1("Shape", [q], start=1, end=2)
            start = g.op1("Sub", [end, g.op1("Squeeze", [steps])])
            positions = g.op1(
                "Cast",
                [g.op1("Range", [start, end, g.constant("step", np.array(1))])],
                to=TensorProto.FLOAT,
            )
            inv_freq = (
                1.0 / (theta ** (np.arange(0, d, 2, dtype=np.int64).astype(np.float32) / d))
            ).astype(np.float32)  # as edge.rope builds it
            angles = g.op1(
                "Mul",
                [
                    g.op1("Unsqueeze", [positions, g.constant("axes12", np.array([1, 2]))]),
                    g.constant("inv_freq", inv_freq),
                ],
            )
            cos, sin = g.op1("Cos", [angles]), g.op1("Sin", [angles])
            split = {n: _rotate_half(g, x, cos, sin) for n, x in split.items()}
        q, k = (
            g.op1("Reshape", [x, g.constant(f"{n}_flat", np.array([0, 0, -1]))])
            for n, x in split.items()
        )
        return q, k, rotary

    @staticmethod
    def linear(g: GraphBuilder, x: str, weight: Linear) -> str:
        """x @ W: `MatMul` on float32 [K, N], or `MatMulNBits` on block-quantized rows."""
        if isinstance(weight, FloatLinear):
            return g.op1("MatMul", [x, g.weight(weight.weight)])
        if isinstance(weight, Int8RowLinear):
            return int8_row_matmul(g, x, weight)
        if isinstance(weight, QDQLinear):  # static int8: Q/DQ pairs an NPU compiler fuses
            w = g.op1("DequantizeLinear", [g.weight(weight.weight), g.weight(weight.scale)], axis=1)
            return g.op1("MatMul", [qdq(g, x, weight.input_range, weight.activation_bits), w])
        inputs = [x, g.weight(weight.packed), g.weight(weight.scales)]
        if weight.zero_points is not None:
            inputs.append(g.weight(weight.zero_points))
        attrs = {"K": weight.K, "N": weight.N, "bits": weight.bits, "block_size": weight.block_size}
        if weight.accuracy_level:
            attrs["accuracy_level"] = weight.accuracy_level
        return g.op1("MatMulNBits", inputs, domain="com.microsoft", **attrs)

    def head_graph(
        self,
        spec: ModelSpec,
        norm: TensorEntry,
        output: TensorEntry | QuantLinear | RowInt8 | Int8RowLinear,
        dims: GraphDims = DYNAMIC,
    ) -> onnx.ModelProto:
        g = GraphBuilder("head")
        x = g.input(
            fmt.hidden_name(spec.num_layers), FLOAT, [dims.batch, dims.seq, spec.hidden_size]
        )
        index = g.input(fmt.LOGITS_INDEX, TensorProto.INT64, ["n_logits"])
        picked = g.op1("Gather", [x, index], axis=1)  # [B, K, H]: only the positions asked for
        normed = g.op1(
            "SimplifiedLayerNormalization",
            [picked, g.weight(norm)],
            axis=-1,
            epsilon=spec.rms_norm_eps,
            stash_type=1,
        )
        if isinstance(output, Int8RowLinear):  # [H, V] int8 rows x the picked tokens
            int8_row_matmul(g, normed, output, out=fmt.LOGITS)
            g.output(fmt.LOGITS, FLOAT, [dims.batch, "n_logits", spec.vocab_size])
            return g.model()
        if isinstance(output, RowInt8):
            normed = qdq(g, normed, output.input_range, output.activation_bits)
            output = g.op1(
                "DequantizeLinear", [g.weight(output.weight), g.weight(output.scale)], axis=0
            )  # [V, H]: NPUs fuse this into their int8 matmul
        if isinstance(output, QuantLinear):
            g.op(
                "MatMulNBits",
                [
                    normed,
                    g.weight(output.packed),
                    g.weight(output.scales),
                    *([g.weight(output.zero_points)] if output.zero_points else []),
                ],
                outputs=[fmt.LOGITS],
                domain="com.microsoft",
                K=output.K,
                N=output.N,
                bits=output.bits,
                block_size=output.block_size,
                **({"accuracy_level": output.accuracy_level} if output.accuracy_level else {}),
            )
            g.output(fmt.LOGITS, FLOAT, [dims.batch, "n_logits", spec.vocab_size])
            return g.model()
        flat = g.op1("Reshape", [normed, g.constant("flat", np.array([-1, spec.hidden_size]))])
        # The output matrix is [V, H] (shared with the embedding when tied): Gemm transposes it.
        weight = g.weight(output) if isinstance(output, TensorEntry) else output
        logits = g.op1("Gemm", [flat, weight], transB=1)
        lead = g.op1("Shape", [picked], start=0, end=2)
        shape = g.op1("Concat", [lead, g.constant("vocab", np.array([spec.vocab_size]))], axis=0)
        g.op("Reshape", [logits, shape], outputs=[fmt.LOGITS])
        g.output(fmt.LOGITS, FLOAT, [dims.batch, "n_logits", spec.vocab_size])
        return g.model()


def _rotate_half(g: GraphBuilder, x: str, cos: str, sin: str) -> str:
    """Half rotation (Hugging Face's rotate_half) of x [B, S, heads, D] by angles whose cos and
    sin are [S, 1, D/2]."""
    x1, x2 = g.op("Split", [x], 2, axis=-1, num_outputs=2)
    return g.op1(
        "Concat",
        [
            g.op1("Sub", [g.op1("Mul", [x1, cos]), g.op1("Mul", [x2, sin])]),
            g.op1("Add", [g.op1("Mul", [x2, cos]), g.op1("Mul", [x1, sin])]),
        ],
        axis=-1,
    )


def int8_row_matmul(g: GraphBuilder, x: str, weight: Int8RowLinear, out: str | None = None) -> str:
    """x @ W with x quantized per token: uint8 codes round(x / s_row) + 128, one scale per
    row, so a token with huge activations does not coarsen every other token's grid, and each
    token's result is exact in integers whatever else is in the step.
    x: [B, S, K] -> [B, S, N], named `out` when given.

    Eight ops: a decode step runs four of these per block, and each op costs a dispatch and a
    thread-pool wake-up, so the integer product and the column scales are one fused
    `MatMulIntegerToFloat` and nothing is reshaped.
    """
    peak = g.op1(
        "ReduceMax", [g.op1("Abs", [x]), g.constant("last", np.array([-1]))], keepdims=1
    )  # [B, S, 1]
    scale = g.op1(
        "Div",
        [
            g.op1("Max", [peak, g.constant("tiny", np.array(1e-8, np.float32))]),
            g.constant("q127", np.array(127.0, np.float32)),
        ],
    )
    codes = g.op1(
        "QuantizeLinear",
        [
            g.op1("Div", [x, scale]),
            g.constant("one", np.array(1.0, np.float32)),
            g.constant("z128", np.array(128, np.uint8)),
        ],
    )
    product = g.op1(
        "MatMulIntegerToFloat",
        [
            codes,
            g.weight(weight.weight),
            g.constant("one", np.array(1.0, np.float32)),
            g.weight(weight.scale),
            g.constant("a_zero", np.array(128, np.uint8)),
        ],
        domain="com.microsoft",
    )  # [B, S, N]: int32 sums x column scales
    return g.op("Mul", [product, scale], outputs=[out] if out else None)[0]


def qdq(g: GraphBuilder, x: str, value_range: tuple[float, float], bits: int) -> str:
    """QuantizeLinear + DequantizeLinear of an activation over its calibrated range, on
    uint8 or uint16 (NPUs such as Qualcomm's run LLM activations at 16 bits: A16W8)."""
    scale, zero = activation_grid(*value_range, bits)
    s = g.constant("act_scale", np.array(scale, np.float32))
    z = g.constant("act_zero", np.array(zero, np.uint16 if bits == 16 else np.uint8))
    return g.op1("DequantizeLinear", [g.op1("QuantizeLinear", [x, s, z]), s, z])


def rope_row_order(rows: int, n_heads: int) -> np.ndarray:
    """Row order that undoes llama.cpp's Q/K permutation (interleaved rope -> Hugging Face's
    half rotation): within each head llama.cpp stores rows (0, D/2, 1, D/2+1, ...)."""
    half = rows // n_heads // 2
    return np.arange(rows).reshape(n_heads, half, 2).swapaxes(1, 2).reshape(-1)
