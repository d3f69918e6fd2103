"""The architecture declarations: config -> spec, the manifest round trip of the block features,
old manifests loading with Llama's, and a runtime import that needs neither onnx nor torch."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, fields

import pytest

from edge.architectures import (
    FEATURE_FIELDS,
    NORMS,
    declaration,
    layer_rope_theta,
    spec_features,
)
from edge.errors import PackageError, UnsupportedModelError
from edge.format import ModelSpec, _from_dict

LLAMA_SPEC = dict(
    architecture="llama",
    vocab_size=64,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=8,
    rope_theta=10000.0,
    rms_norm_eps=1e-6,
    max_position_embeddings=128,
    tie_word_embeddings=False,
    attention_bias=False,
)
# gemma-3-270m's GGUF metadata as GGUFSource.config() reports it
GEMMA3_GGUF_CONFIG = {
    "model_type": "gemma3",
    "num_hidden_layers": 18,
    "hidden_size": 640,
    "intermediate_size": 2048,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 32768,
    "head_dim": 256,
    "sliding_window": 512,
    "vocab_size": 262144,
    "tie_word_embeddings": True,
}


def test_old_manifest_spec_loads_with_llama_features() -> None:
    spec = _from_dict(ModelSpec, dict(LLAMA_SPEC))  # a manifest written before the features
    assert spec_features(spec) == {
        f.name: f.default for f in fields(ModelSpec) if f.name in FEATURE_FIELDS
    }
    assert not spec.qk_norm and spec.activation == "silu" and spec.sliding_layers == ()
    assert declaration("llama").spec({**_hf(spec), "model_type": "llama"}) == spec


def _hf(spec: ModelSpec) -> dict:
    return {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "rope_theta": spec.rope_theta,
        "rms_norm_eps": spec.rms_norm_eps,
        "max_position_embeddings": spec.max_position_embeddings,
        "tie_word_embeddings": spec.tie_word_embeddings,
    }


def test_gemma3_from_gguf_metadata_uses_llama_cpp_defaults() -> None:
    """GGUF has no layer pattern nor local rope base: every sixth layer is global, 10k local."""
    spec = declaration("gemma3").spec(GEMMA3_GGUF_CONFIG)
    globals_ = [i for i in range(18) if i not in spec.sliding_layers]
    assert globals_ == [5, 11, 17]
    assert layer_rope_theta(spec, 0) == 10000.0 and layer_rope_theta(spec, 5) == 1e6
    assert spec.attention_scale == 256**-0.5 and spec.embedding_scale == 640**0.5
    assert declaration("gemma3_text") is declaration("gemma3")


def test_features_survive_the_manifest_json() -> None:
    spec = declaration("gemma3").spec(GEMMA3_GGUF_CONFIG)
    again = _from_dict(ModelSpec, json.loads(json.dumps(asdict(spec))))
    assert again == spec and isinstance(again.sliding_layers, tuple)
    # a re-quantized package's config carries its features as they are
    config = {**GEMMA3_GGUF_CONFIG, "edge_features": spec_features(spec)}
    assert declaration("gemma3").spec(config) == spec


@pytest.mark.parametrize(
    "bad",
    [
        {"activation": "relu"},
        {"sliding_layers": (0,)},
        {"sliding_window": 4, "sliding_layers": (7,)},
        {"embedding_scale": -1.0},
    ],
)
def test_bad_features_are_refused(bad: dict) -> None:
    with pytest.raises(PackageError):
        ModelSpec(**{**LLAMA_SPEC, **bad})


def test_unsupported_features_are_named() -> None:
    with pytest.raises(UnsupportedModelError, match="final_logit_softcapping"):
        declaration("gemma3").spec({**GEMMA3_GGUF_CONFIG, "final_logit_softcapping": 30.0})
    with pytest.raises(UnsupportedModelError, match="multimodal"):
        declaration("gemma3").spec({"model_type": "gemma3", "text_config": {}})
    with pytest.raises(UnsupportedModelError, match="rope scaling 'linear'"):
        declaration("gemma3").spec({**GEMMA3_GGUF_CONFIG, "rope_scaling": {"rope_type": "linear"}})
    with pytest.raises(UnsupportedModelError, match="not supported"):
        declaration("mistral")
    assert NORMS == ("attn_norm.weight", "ffn_norm.weight")


def test_declarations_import_without_onnx_or_torch() -> None:
    """A Raspberry Pi runtime has numpy and onnxruntime only."""
    code = (
        "import sys; import edge.architectures; "
        "import devices.spec_forward; "
        "bad = [m for m in ('onnx', 'torch') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
