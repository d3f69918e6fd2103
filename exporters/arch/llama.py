"""Llama-family decoder (SmolLM2, Llama 2/3): spec, weight layout and per-part ONNX graphs.

Graph layout of one block (shapes for batch B, step length S, hidden H):

    x [B,S,H] -> RMSNorm -> MatMul(W_qkv) -> GroupQueryAttention (rotary inside, KV cache
    shared in place) -> MatMul(W_o) -> residual + RMSNorm (one fused op) -> MatMul(W_gate_up)
    -> SiLU(gate) * up -> MatMul(W_down) -> + residual -> [B,S,H]

Q, K and V (and gate and up) are stored fused so a decode step runs four matmuls, not seven.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import TensorProto

from edge import format as fmt
from edge.errors import UnsupportedModelError
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


def _config_value(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    if default is None:
        raise UnsupportedModelError(f"model config lacks {keys[0]!r}")
    return default


class LlamaArchitecture:
    """The `llama` architecture; subclasses change only what differs (see qwen2.py)."""

    name: ClassVar[str] = "llama"
    # llama.cpp's converter permutes Q/K rows of llama models for its interleaved rope.
    gguf_permutes_qk: ClassVar[bool] = True
    default_attention_bias: ClassVar[bool] = False

    # ---- spec --------------------------------------------------------------------------------
    def spec(self, config: dict[str, Any]) -> ModelSpec:
        """Hyper-parameters from a Hugging Face style config dict."""
        self._check_rope_scaling(config)
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        rope = config.get("rope_parameters") or {}
        return ModelSpec(
            architecture=self.name,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(_config_value(config, "num_key_value_heads", default=heads)),
            head_dim=int(_config_value(config, "head_dim", default=hidden // heads)),
            rope_theta=float(rope.get("rope_theta") or _config_value(config, "rope_theta",
                                                                     default=10000.0)),
            rms_norm_eps=float(_config_value(config, "rms_norm_eps", default=1e-6)),
            max_position_embeddings=int(_config_value(config, "max_position_embeddings",
                                                      default=2048)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", self.default_attention_bias)),
        )

    @staticmethod
    def _check_rope_scaling(config: dict[str, Any]) -> None:
        scaling = config.get("rope_scaling") or config.get("rope_parameters") or {}
        if config.get("use_sliding_window"):
            raise UnsupportedModelError("sliding-window attention is not supported yet")
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in (None, "default"):
            raise UnsupportedModelError(
                f"rope scaling {kind!r} is not supported yet (only plain rotary embeddings)"
            )

    # ---- weights ----------------------------------------------------------------------------
    def head_tensor(self, source: Source) -> str:
        """The output matrix [V, H]; tied models reuse the token embedding."""
        return "output.weight" if source.has("output.weight") else "token_embd.weight"

    def block_vectors(self, source: Source, spec: ModelSpec, i: int) -> dict[str, np.ndarray]:
        """Norm weights (and Q/K/V biases): small, always float32."""
        names = ["attn_norm.weight", "ffn_norm.weight"]
        vectors = {n: source.read(f"blk.{i}.{n}") for n in names}
        if spec.attention_bias:
            vectors["attn_qkv.bias"] = np.concatenate(
                [source.read(f"blk.{i}.attn_{x}.bias") for x in "qkv"])
        return {f"blk.{i}.{k}": np.ascontiguousarray(v, np.float32) for k, v in vectors.items()}

    def block_linears(self, source: Source, spec: ModelSpec, i: int) -> dict[str, RowWeight]:
        """One block's matmul weights, rows = outputs, Q/K/V and gate/up fused."""
        def rows(name: str) -> RowWeight:
            return source.read_rows(f"blk.{i}.{name}")

        q, k = rows("attn_q.weight"), rows("attn_k.weight")
        if source.kind == "gguf" and self.gguf_permutes_qk:
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
    def embed_graph(self, spec: ModelSpec, embed: TensorEntry | QuantLinear | RowInt8,
                    dims: GraphDims = DYNAMIC) -> onnx.ModelProto:
        g = GraphBuilder("embed")
        ids = g.input(fmt.INPUT_IDS, TensorProto.INT64, [dims.batch, dims.seq])
        out = [fmt.hidden_name(0)]
        if isinstance(embed, TensorEntry):
            g.op("Gather", [g.weight(embed), ids], outputs=out, axis=0)
        elif isinstance(embed, RowInt8):  # plain ops: int8 rows times their scale
            rows = g.op1("Cast", [g.op1("Gather", [g.weight(embed.weight), ids], axis=0)],
                         to=TensorProto.FLOAT)
            scale = g.op1("Unsqueeze", [g.op1("Gather", [g.weight(embed.scale), ids], axis=0),
                                        g.constant("last", np.array([-1]))])
            g.op("Mul", [rows, scale], outputs=out)
        else:  # rows dequantized on the fly: [V, H * bits / 8] blocks -> [B, S, H] float32
            inputs = [g.weight(embed.packed), ids, g.weight(embed.scales)]
            if embed.zero_points is not None:
                inputs.append(g.weight(embed.zero_points))
            g.op("GatherBlockQuantized", inputs, outputs=out, domain="com.microsoft",
                 gather_axis=0, quantize_axis=1, block_size=embed.block_size, bits=embed.bits)
        g.output(fmt.hidden_name(0), FLOAT, [dims.batch, dims.seq, spec.hidden_size])
        return g.model()

    def block_graph(self, spec: ModelSpec, i: int, vectors: dict[str, TensorEntry],
                    linears: dict[str, Linear], dims: GraphDims = DYNAMIC) -> onnx.ModelProto:
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

        eps = spec.rms_norm_eps
        normed = g.op1("SimplifiedLayerNormalization", [x, weight("attn_norm.weight")],
                       axis=-1, epsilon=eps, stash_type=1)
        qkv = linear(normed, "attn_qkv.weight")
        if spec.attention_bias:
            qkv = g.op1("Add", [qkv, weight("attn_qkv.bias")])
        # qkv: [B, S, (H_q + 2 H_kv) * D]; the cache [B, H_kv, max_context, D] is updated in place
        attn = g.op("GroupQueryAttention",
                    [qkv, "", "", past_k, past_v, seqlens, total, cos, sin],
                    outputs=[g.fresh("attn"), fmt.present_key_name(i),
                             fmt.present_value_name(i)],
                    domain="com.microsoft", num_heads=spec.num_heads,
                    kv_num_heads=spec.num_kv_heads, do_rotary=1, rotary_interleaved=0,
                    scale=float(d) ** -0.5)[0]
        projected = linear(attn, "attn_output.weight")
        normed2, _, _, residual = g.op("SkipSimplifiedLayerNormalization",
                                       [x, projected, weight("ffn_norm.weight")], 4,
                                       domain="com.microsoft", epsilon=eps)
        gate_up = linear(normed2, "ffn_gate_up.weight")
        gate, up = g.op("Split", [gate_up], 2, axis=-1, num_outputs=2)
        act = g.op1("Mul", [g.op1("Mul", [gate, g.op1("Sigmoid", [gate])]), up])
        down = linear(act, "ffn_down.weight")
        g.op("Add", [residual, down], outputs=[fmt.hidden_name(i + 1)])

        g.output(fmt.hidden_name(i + 1), FLOAT, [dims.batch, dims.seq, h])
        g.output(fmt.present_key_name(i), FLOAT, cache_shape)
        g.output(fmt.present_value_name(i), FLOAT, cache_shape)
        return g.model()

    @staticmethod
    def linear(g: GraphBuilder, x: str, weight: Linear) -> str:
        """x @ W: `MatMul` on float32 [K, N], or `MatMulNBits` on block-quantized rows."""
        if isinstance(weight, FloatLinear):
            return g.op1("MatMul", [x, g.weight(weight.weight)])
        if isinstance(weight, Int8RowLinear):
            return int8_row_matmul(g, x, weight)
        if isinstance(weight, QDQLinear):  # static int8: Q/DQ pairs an NPU compiler fuses
            w = g.op1("DequantizeLinear", [g.weight(weight.weight), g.weight(weight.scale)],
                      axis=1)
            return g.op1("MatMul", [qdq(g, x, weight.input_range, weight.activation_bits), w])
        inputs = [x, g.weight(weight.packed), g.weight(weight.scales)]
        if weight.zero_points is not None:
            inputs.append(g.weight(weight.zero_points))
        attrs = {"K": weight.K, "N": weight.N, "bits": weight.bits,
                 "block_size": weight.block_size}
        if weight.accuracy_level:
            attrs["accuracy_level"] = weight.accuracy_level
        return g.op1("MatMulNBits", inputs, domain="com.microsoft", **attrs)

    def head_graph(self, spec: ModelSpec, norm: TensorEntry,
                   output: TensorEntry | QuantLinear | RowInt8 | Int8RowLinear,
                   dims: GraphDims = DYNAMIC) -> onnx.ModelProto:
        g = GraphBuilder("head")
        x = g.input(fmt.hidden_name(spec.num_layers), FLOAT,
                    [dims.batch, dims.seq, spec.hidden_size])
        index = g.input(fmt.LOGITS_INDEX, TensorProto.INT64, ["n_logits"])
        picked = g.op1("Gather", [x, index], axis=1)  # [B, K, H]: only the positions asked for
        normed = g.op1("SimplifiedLayerNormalization", [picked, g.weight(norm)],
                       axis=-1, epsilon=spec.rms_norm_eps, stash_type=1)
        if isinstance(output, Int8RowLinear):  # [H, V] int8 rows x the picked tokens
            int8_row_matmul(g, normed, output, out=fmt.LOGITS)
            g.output(fmt.LOGITS, FLOAT, [dims.batch, "n_logits", spec.vocab_size])
            return g.model()
        if isinstance(output, RowInt8):
            normed = qdq(g, normed, output.input_range, output.activation_bits)
            output = g.op1("DequantizeLinear", [g.weight(output.weight), g.weight(output.scale)],
                           axis=0)  # [V, H]: NPUs fuse this into their int8 matmul
        if isinstance(output, QuantLinear):
            g.op("MatMulNBits", [normed, g.weight(output.packed), g.weight(output.scales),
                                 *([g.weight(output.zero_points)] if output.zero_points else [])],
                 outputs=[fmt.LOGITS], domain="com.microsoft", K=output.K, N=output.N,
                 bits=output.bits, block_size=output.block_size,
                 **({"accuracy_level": output.accuracy_level} if output.accuracy_level else {}))
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


def int8_row_matmul(g: GraphBuilder, x: str, weight: Int8RowLinear,
                    out: str | None = None) -> str:
    """x @ W with x quantized per token: uint8 codes round(x / s_row) + 128, one scale per
    row, so a token with huge activations does not coarsen every other token's grid, and each
    token's result is exact in integers whatever else is in the step.
    x: [B, S, K] -> [B, S, N], named `out` when given.

    Eight ops: a decode step runs four of these per block, and each op costs a dispatch and a
    thread-pool wake-up, so the integer product and the column scales are one fused
    `MatMulIntegerToFloat` and nothing is reshaped.
    """
    peak = g.op1("ReduceMax", [g.op1("Abs", [x]), g.constant("last", np.array([-1]))],
                 keepdims=1)  # [B, S, 1]
    scale = g.op1("Div", [g.op1("Max", [peak, g.constant("tiny", np.array(1e-8, np.float32))]),
                          g.constant("q127", np.array(127.0, np.float32))])
    codes = g.op1("QuantizeLinear", [g.op1("Div", [x, scale]),
                                     g.constant("one", np.array(1.0, np.float32)),
                                     g.constant("z128", np.array(128, np.uint8))])
    product = g.op1("MatMulIntegerToFloat",
                    [codes, g.weight(weight.weight), g.constant("one", np.array(1.0, np.float32)),
                     g.weight(weight.scale), g.constant("a_zero", np.array(128, np.uint8))],
                    domain="com.microsoft")  # [B, S, N]: int32 sums x column scales
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
