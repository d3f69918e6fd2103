"""One declaration per architecture: how a source config maps to a `ModelSpec`, what a block
holds and what it computes, read by every forward (the ONNX graph builder in exporters/arch/,
the numpy and torch forwards in devices/spec_forward/, the calibration forward in exporters/).

Plain Python on purpose: a runtime with only numpy + onnxruntime (a Raspberry Pi) imports it to
run a package, so it must not need onnx or torch. A block is Llama's unless its spec says
otherwise (`ModelSpec`'s feature fields, stored in the manifest):

    x -> norm -> W_qkv (+ bias) -> [q/k RMSNorm per head] -> rope (base per layer) -> causal GQA
    (scale, optional sliding window) -> W_o -> [post-attention norm] -> + x = r -> norm ->
    W_gate_up -> act(gate) * up -> W_down -> [post-FFN norm] -> + r

Tensor names inside a package (GGUF style, `blk.<i>.` prefixed) are declared here too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edge.errors import UnsupportedModelError
from edge.format import ModelSpec

# Block matmuls, each `blk.<i>.<role>.weight`, x @ W: Q/K/V fused and gate/up fused.
LINEAR_ROLES = ("attn_qkv", "attn_output", "ffn_gate_up", "ffn_down")
NORMS = ("attn_norm.weight", "ffn_norm.weight")  # before attention, before the FFN: [H]
QK_NORMS = ("attn_q_norm.weight", "attn_k_norm.weight")  # per head: [D]
SANDWICH_NORMS = ("post_attention_norm.weight", "post_ffw_norm.weight")  # [H]
QKV_BIAS = "attn_qkv.bias"  # [(H_q + 2 H_kv) D]


# ModelSpec's block-feature fields; a config carrying them under FEATURES_KEY (an edge package
# being re-quantized) is taken at its word rather than re-derived from Hugging Face keys.
FEATURE_FIELDS = (
    "qk_norm",
    "sandwich_norms",
    "activation",
    "embedding_scale",
    "attention_scale",
    "sliding_window",
    "sliding_layers",
    "rope_local_theta",
)
FEATURES_KEY = "edge_features"


def spec_features(spec: ModelSpec) -> dict[str, Any]:
    return {name: getattr(spec, name) for name in FEATURE_FIELDS}


def block_vector_names(spec: ModelSpec) -> tuple[str, ...]:
    """A block's float32 vectors (norm weights, bias), without the `blk.<i>.` prefix."""
    names = [*NORMS]
    if spec.qk_norm:
        names += QK_NORMS
    if spec.sandwich_norms:
        names += SANDWICH_NORMS
    if spec.attention_bias:
        names.append(QKV_BIAS)
    return tuple(names)


def is_sliding(spec: ModelSpec, layer: int) -> bool:
    return layer in spec.sliding_layers


def layer_rope_theta(spec: ModelSpec, layer: int) -> float:
    """Rope base of `layer`: sliding layers may use their own (Gemma 3: 10k vs 1M)."""
    if is_sliding(spec, layer) and spec.rope_local_theta:
        return spec.rope_local_theta
    return spec.rope_theta


def attention_scale(spec: ModelSpec) -> float:
    return spec.attention_scale or spec.head_dim**-0.5


# ---- config -> spec -----------------------------------------------------------------------------


def config_value(config: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for key in keys:
        if config.get(key) is not None:
            return config[key]
    if default is None:
        raise UnsupportedModelError(f"model config lacks {keys[0]!r}")
    return default


def _plain_rope(scaling: dict[str, Any] | None, what: str) -> None:
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind not in (None, "default"):
        raise UnsupportedModelError(
            f"{what}rope scaling {kind!r} is not supported yet (only plain rotary embeddings)"
        )


def _llama_features(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("use_sliding_window"):
        raise UnsupportedModelError("sliding-window attention is not supported yet")
    _plain_rope(config.get("rope_scaling") or config.get("rope_parameters"), "")
    return {}


def _gemma3_features(config: dict[str, Any]) -> dict[str, Any]:
    """Gemma 3 text: q/k norms, sandwich norms, GELU (tanh), embeddings times sqrt(H), sliding
    layers (all but every sixth) with their own rope base. GGUF metadata lacks the pattern and
    the local base: llama.cpp hard-codes them (6 and 10k) for gemma3, so do we."""
    if "text_config" in config:
        raise UnsupportedModelError(
            "a multimodal Gemma 3 checkpoint: export its text model (Gemma3ForCausalLM) or its GGUF"
        )
    for key in ("attn_logit_softcapping", "final_logit_softcapping"):
        if config.get(key) is not None:
            raise UnsupportedModelError(f"gemma3 with {key}={config[key]} is not supported")
    if config.get("hidden_activation", "gelu_pytorch_tanh") not in (
        "gelu_pytorch_tanh",
        "gelu_tanh",
    ):
        raise UnsupportedModelError(
            f"activation {config['hidden_activation']!r}: only gelu_pytorch_tanh"
        )
    rope = config.get("rope_parameters") or {}
    local = rope.get("sliding_attention") or {}
    _plain_rope(rope.get("full_attention") or config.get("rope_scaling"), "full-attention ")
    _plain_rope(local, "sliding ")
    layers = int(config["num_hidden_layers"])
    types = config.get("layer_types") or [
        "full_attention"
        if (i + 1) % int(config.get("sliding_window_pattern") or 6) == 0
        else "sliding_attention"
        for i in range(layers)
    ]
    hidden = int(config["hidden_size"])
    heads = int(config["num_attention_heads"])
    head_dim = int(config_value(config, "head_dim", default=hidden // heads))
    scalar = float(config_value(config, "query_pre_attn_scalar", default=head_dim))
    return {
        "qk_norm": True,
        "sandwich_norms": True,
        "activation": "gelu_tanh",
        # float32 like transformers' scaled embedding, so the product rounds the same way
        "embedding_scale": float(math.sqrt(hidden)),
        "attention_scale": scalar**-0.5,
        "sliding_window": int(config_value(config, "sliding_window", default=4096)),
        "sliding_layers": tuple(i for i, t in enumerate(types) if t == "sliding_attention"),
        "rope_local_theta": float(
            local.get("rope_theta") or config_value(config, "rope_local_base_freq", default=10000.0)
        ),
        "rope_theta": float(
            (rope.get("full_attention") or {}).get("rope_theta")
            or config_value(config, "rope_theta", default=1_000_000.0)
        ),
        "tie_word_embeddings": bool(config.get("tie_word_embeddings", True)),
    }


# Gemma's turn format (transformers' template for the instruction-tuned Gemma 3, string contents):
# a system message opens the first user turn; the assistant's role is "model".
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages and messages[0]['role'] == 'system' -%}"
    "{%- set prefix = messages[0]['content'] + '\n\n' -%}{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


@dataclass(frozen=True)
class Declaration:
    """What an architecture is, once: its names and the spec features of its blocks.

    `gguf_permutes_qk`: llama.cpp stored Q/K rows interleaved for its rope (undone on export).
    `hf_norm_offset`: added to a Hugging Face checkpoint's norm weights (Gemma's `1 + w`;
    llama.cpp's converter already added it to GGUF files), so every runtime multiplies by `w`.
    `hf_layer_names`: Hugging Face tensor names that differ from Llama's, in GGUF style.
    `chat_template`: the family's turn format, for sources that carry none (the base
    gemma-3-270m GGUF has no template, yet its vocabulary has Gemma's turn tokens).
    """

    name: str
    aliases: tuple[str, ...] = ()
    gguf_permutes_qk: bool = True
    default_attention_bias: bool = False
    hf_norm_offset: float = 0.0
    hf_layer_names: dict[str, str] = field(default_factory=dict)
    features: Callable[[dict[str, Any]], dict[str, Any]] = _llama_features
    chat_template: str | None = None

    def spec(self, config: dict[str, Any]) -> ModelSpec:
        """Hyper-parameters from a Hugging Face style config dict."""
        features = config.get(FEATURES_KEY) or self.features(config)
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        rope = config.get("rope_parameters") or {}
        base = dict(
            architecture=self.name,
            vocab_size=int(config["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(config["intermediate_size"]),
            num_layers=int(config["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(config_value(config, "num_key_value_heads", default=heads)),
            head_dim=int(config_value(config, "head_dim", default=hidden // heads)),
            rope_theta=float(
                rope.get("rope_theta") or config_value(config, "rope_theta", default=10000.0)
            ),
            rms_norm_eps=float(config_value(config, "rms_norm_eps", default=1e-6)),
            max_position_embeddings=int(
                config_value(config, "max_position_embeddings", default=2048)
            ),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            attention_bias=bool(config.get("attention_bias", self.default_attention_bias)),
        )
        return ModelSpec(**{**base, **features})


LLAMA = Declaration("llama")
# llama.cpp runs qwen2 with NEOX (half-rotation) rope, so Q/K rows are stored as in HF.
QWEN2 = Declaration("qwen2", gguf_permutes_qk=False, default_attention_bias=True)
GEMMA3 = Declaration(
    "gemma3",
    aliases=("gemma3_text",),
    gguf_permutes_qk=False,
    hf_norm_offset=1.0,
    hf_layer_names={
        "self_attn.q_norm.weight": "attn_q_norm.weight",
        "self_attn.k_norm.weight": "attn_k_norm.weight",
        "post_attention_layernorm.weight": "post_attention_norm.weight",
        "pre_feedforward_layernorm.weight": "ffn_norm.weight",
        "post_feedforward_layernorm.weight": "post_ffw_norm.weight",
    },
    features=_gemma3_features,
    chat_template=GEMMA_CHAT_TEMPLATE,
)

DECLARATIONS: dict[str, Declaration] = {
    name: d for d in (LLAMA, QWEN2, GEMMA3) for name in (d.name, *d.aliases)
}


def declaration(name: str) -> Declaration:
    try:
        return DECLARATIONS[name]
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {name!r} is not supported; supported: {sorted(DECLARATIONS)}"
        ) from None
