"""Llama-family decoder (SmolLM2, Llama 2/3): spec, weight layout and per-part ONNX graphs.

Graph layout of one block (shapes for batch B, step length S, hidden H):

    x [B,S,H] -> RMSNorm -> MatMul(W_qkv) -> GroupQueryAttention (rotary inside, KV cache
    shared in place) -> MatMul(W_o) -> residual + RMSNorm (one fused op) -> MatMul(W_gate_up)
    -> SiLU(gate) * up -> MatMul(W_down) -> + residual -> [B,S,H]

Q, K and V (and gate and up) are stored fused so a decode step runs four matmuls, not seven.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import TensorProto

from edge import format as fmt
from edge.errors import UnsupportedModelError
from edge.format import ModelSpec, TensorEntry, WeightFileWriter
from exporters.onnx_graph import GraphBuilder
from exporters.sources.base import Source

FLOAT = TensorProto.FLOAT
ROWS_PER_CHUNK = 8192  # embedding rows dequantized at a time: bounds export memory


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
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        if kind not in (None, "default"):
            raise UnsupportedModelError(
                f"rope scaling {kind!r} is not supported yet (only plain rotary embeddings)"
            )

    # ---- weights -----------------------------------------------------------------------------
    def write_embed(self, source: Source, spec: ModelSpec, out: WeightFileWriter) -> TensorEntry:
        """The token embedding [V, H], written in row chunks (it is the largest tensor)."""
        return out.add_chunks("token_embd.weight", "float32", (spec.vocab_size, spec.hidden_size),
                              self._row_chunks(source, "token_embd.weight", spec.vocab_size))

    def write_head(self, source: Source, spec: ModelSpec, out: WeightFileWriter,
                   embed: TensorEntry) -> dict[str, TensorEntry]:
        entries = {"norm": out.add("output_norm.weight", source.read("output_norm.weight"))}
        if source.has("output.weight"):
            entries["output"] = out.add_chunks(
                "output.weight", "float32", (spec.vocab_size, spec.hidden_size),
                self._row_chunks(source, "output.weight", spec.vocab_size))
        else:  # tied embeddings: the head reads the embedding's bytes, stored once
            entries["output"] = embed
        return entries

    @staticmethod
    def _row_chunks(source: Source, name: str, rows: int) -> Iterator[np.ndarray]:
        for start in range(0, rows, ROWS_PER_CHUNK):
            yield source.read(name, slice(start, min(rows, start + ROWS_PER_CHUNK)))

    def block_weights(self, source: Source, spec: ModelSpec, i: int) -> dict[str, np.ndarray]:
        """One block's tensors in graph layout: matmul weights as [in, out], fused QKV/gate-up."""
        def w(name: str) -> np.ndarray:
            return source.read(f"blk.{i}.{name}")

        q, k, v = w("attn_q.weight"), w("attn_k.weight"), w("attn_v.weight")
        if source.kind == "gguf" and self.gguf_permutes_qk:
            q = unpermute_rope_rows(q, spec.num_heads)
            k = unpermute_rope_rows(k, spec.num_kv_heads)
        weights = {
            "attn_norm.weight": w("attn_norm.weight"),
            "attn_qkv.weight": np.concatenate([q, k, v], axis=0).T,
            "attn_output.weight": w("attn_output.weight").T,
            "ffn_norm.weight": w("ffn_norm.weight"),
            "ffn_gate_up.weight": np.concatenate([w("ffn_gate.weight"), w("ffn_up.weight")]).T,
            "ffn_down.weight": w("ffn_down.weight").T,
        }
        if spec.attention_bias:
            weights["attn_qkv.bias"] = np.concatenate(
                [w("attn_q.bias"), w("attn_k.bias"), w("attn_v.bias")])
        return {f"blk.{i}.{k}": np.ascontiguousarray(v, dtype=np.float32)
                for k, v in weights.items()}

    # ---- graphs ------------------------------------------------------------------------------
    def embed_graph(self, spec: ModelSpec, embed: TensorEntry) -> onnx.ModelProto:
        g = GraphBuilder("embed")
        ids = g.input(fmt.INPUT_IDS, TensorProto.INT64, ["batch", "seq"])
        g.op("Gather", [g.weight(embed), ids], outputs=[fmt.hidden_name(0)], axis=0)
        g.output(fmt.hidden_name(0), FLOAT, ["batch", "seq", spec.hidden_size])
        return g.model()

    def block_graph(self, spec: ModelSpec, i: int,
                    entries: dict[str, TensorEntry]) -> onnx.ModelProto:
        g = GraphBuilder(f"block.{i}")
        h, d = spec.hidden_size, spec.head_dim
        x = g.input(fmt.hidden_name(i), FLOAT, ["batch", "seq", h])
        cache_shape = ["batch", spec.num_kv_heads, "max_context", d]
        past_k = g.input(fmt.past_key_name(i), FLOAT, cache_shape)
        past_v = g.input(fmt.past_value_name(i), FLOAT, cache_shape)
        seqlens = g.input(fmt.SEQLENS_K, TensorProto.INT32, ["batch"])
        total = g.input(fmt.TOTAL_SEQUENCE_LENGTH, TensorProto.INT32, [])
        cos = g.input(fmt.COS_CACHE, FLOAT, ["max_context", d // 2])
        sin = g.input(fmt.SIN_CACHE, FLOAT, ["max_context", d // 2])

        def weight(name: str) -> str:
            return g.weight(entries[f"blk.{i}.{name}"])

        eps = spec.rms_norm_eps
        normed = g.op1("SimplifiedLayerNormalization", [x, weight("attn_norm.weight")],
                       axis=-1, epsilon=eps, stash_type=1)
        qkv = self.linear(g, normed, weight("attn_qkv.weight"))
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
        projected = self.linear(g, attn, weight("attn_output.weight"))
        normed2, _, _, residual = g.op("SkipSimplifiedLayerNormalization",
                                       [x, projected, weight("ffn_norm.weight")], 4,
                                       domain="com.microsoft", epsilon=eps)
        gate_up = self.linear(g, normed2, weight("ffn_gate_up.weight"))
        gate, up = g.op("Split", [gate_up], 2, axis=-1)
        act = g.op1("Mul", [g.op1("Mul", [gate, g.op1("Sigmoid", [gate])]), up])
        down = self.linear(g, act, weight("ffn_down.weight"))
        g.op("Add", [residual, down], outputs=[fmt.hidden_name(i + 1)])

        g.output(fmt.hidden_name(i + 1), FLOAT, ["batch", "seq", h])
        g.output(fmt.present_key_name(i), FLOAT, cache_shape)
        g.output(fmt.present_value_name(i), FLOAT, cache_shape)
        return g.model()

    @staticmethod
    def linear(g: GraphBuilder, x: str, weight: str) -> str:
        """x @ W with W stored [in, out]; the quantization issue swaps this for MatMulNBits."""
        return g.op1("MatMul", [x, weight])

    def head_graph(self, spec: ModelSpec, entries: dict[str, TensorEntry]) -> onnx.ModelProto:
        g = GraphBuilder("head")
        x = g.input(fmt.hidden_name(spec.num_layers), FLOAT, ["batch", "seq", spec.hidden_size])
        index = g.input(fmt.LOGITS_INDEX, TensorProto.INT64, ["n_logits"])
        picked = g.op1("Gather", [x, index], axis=1)  # [B, K, H]: only the positions asked for
        normed = g.op1("SimplifiedLayerNormalization", [picked, g.weight(entries["norm"])],
                       axis=-1, epsilon=spec.rms_norm_eps, stash_type=1)
        flat = g.op1("Reshape", [normed, g.constant("flat", np.array([-1, spec.hidden_size]))])
        # The output matrix is [V, H] (shared with the embedding when tied): Gemm transposes it.
        logits = g.op1("Gemm", [flat, g.weight(entries["output"])], transB=1)
        lead = g.op1("Shape", [picked], start=0, end=2)
        shape = g.op1("Concat", [lead, g.constant("vocab", np.array([spec.vocab_size]))], axis=0)
        g.op("Reshape", [logits, shape], outputs=[fmt.LOGITS])
        g.output(fmt.LOGITS, FLOAT, ["batch", "n_logits", spec.vocab_size])
        return g.model()


def unpermute_rope_rows(weight: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row permutation (interleaved rope -> Hugging Face half rotation).

    weight: [n_heads * D, in]. Within each head llama.cpp orders rows (0, D/2, 1, D/2+1, ...).
    """
    rows = weight.shape[0]
    half = rows // n_heads // 2
    return (weight.reshape(n_heads, half, 2, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))

