"""Packages for the spec-forward parity tests, built once per session and shared by the numpy
and torch test files: SmolLM2 int4 (as `edge quantize` makes it), and a tiny random Qwen2 (q/k/v
biases, untied head) in float32 and int4-mixed."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from spec_forward_parity import (
    DECODE_STEPS,
    GREEDY_STEPS,
    MAX_CONTEXT,
    Run,
    prompt_ids,
    run,
)

from edge.engine import Engine, EngineConfig
from edge.package import open_package
from exporters.export import ExportConfig, export, quantize_package

TINY_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Edge devices run small language models locally, without a server.",
    "Rotary embeddings rotate queries and keys by an angle that grows with position.",
]
TINY_CONFIG = {
    "model_type": "qwen2",
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rope_theta": 10000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "torch_dtype": "float32",
}


@pytest.fixture(scope="session")
def smollm2_int4_package(smollm2_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 int4 with the default accuracy_level 4 (ORT quantizes activations to int8)."""
    return quantize_package(
        smollm2_package,
        tmp_path_factory.mktemp("spec-int4") / "pkg",
        ExportConfig(quant="int4"),
        progress=False,
    )


def _write_tokenizer(folder: Path) -> int:
    """A byte-level BPE trained on a few sentences, saved the way transformers reads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(TINY_SENTENCES, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.save_pretrained(folder)
    return len(tokenizer)


def _write_tiny_qwen2(folder: Path, seed: int = 7) -> None:
    """config.json and random safetensors weights in Hugging Face's Qwen2 names."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True)
    vocab = _write_tokenizer(folder)
    config = {**TINY_CONFIG, "vocab_size": vocab}
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(seed)
    h, f, d = config["hidden_size"], config["intermediate_size"], 16

    def normal(*shape: int, std: float = 0.2) -> np.ndarray:
        return rng.normal(0.0, std, shape).astype(np.float32)

    tensors = {
        "model.embed_tokens.weight": normal(vocab, h),
        "model.norm.weight": 1.0 + normal(h, std=0.1),
        "lm_head.weight": normal(vocab, h),
    }
    for i in range(config["num_hidden_layers"]):
        p = f"model.layers.{i}."
        outs = {"q": 4 * d, "k": 2 * d, "v": 2 * d}
        for x, n in outs.items():
            tensors[f"{p}self_attn.{x}_proj.weight"] = normal(n, h)
            tensors[f"{p}self_attn.{x}_proj.bias"] = normal(n, std=0.5)
        tensors |= {
            f"{p}self_attn.o_proj.weight": normal(h, 4 * d),
            f"{p}mlp.gate_proj.weight": normal(f, h),
            f"{p}mlp.up_proj.weight": normal(f, h),
            f"{p}mlp.down_proj.weight": normal(h, f),
            f"{p}input_layernorm.weight": 1.0 + normal(h, std=0.1),
            f"{p}post_attention_layernorm.weight": 1.0 + normal(h, std=0.1),
        }
    save_file(tensors, str(folder / "model.safetensors"))


@pytest.fixture(scope="session")
def tiny_qwen2_packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{"fp32": ..., "int4-mixed": ..., "w8a8": ...}: the int4-mixed one mixes 4- and 8-bit
    blocks with zero points (asymmetric) and accuracy_level 0, so ORT computes it in float32
    too; w8a8 runs int8 rows on activations rounded to int8 per token."""
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("spec-tiny-qwen2")
    _write_tiny_qwen2(root / "hf")
    fp32 = export(root / "hf", root / "fp32", progress=False)
    mixed = quantize_package(
        fp32,
        root / "int4-mixed",
        ExportConfig(quant="int4-mixed", symmetric=False, accuracy_level=0),
        progress=False,
    )
    w8a8 = quantize_package(fp32, root / "w8a8", ExportConfig(quant="w8a8"), progress=False)
    return {"fp32": fp32, "int4-mixed": mixed, "w8a8": w8a8}


@pytest.fixture(scope="session")
def ort_reference() -> Callable[[Path], Run]:
    """package -> edge's Engine (the ONNX graphs on ONNX Runtime): GREEDY_STEPS greedy tokens
    after the prompt, and the logits compared; computed once per package."""
    runs: dict[Path, Run] = {}

    def reference(package: Path) -> Run:
        if package not in runs:
            engine = Engine(open_package(package), EngineConfig(max_context=MAX_CONTEXT))
            runs[package] = run(engine, prompt_ids(package), GREEDY_STEPS)
        return runs[package]

    return reference


@pytest.fixture(scope="session")
def smollm2_int4_control(
    smollm2_package: Path, smollm2_int4_package: Path, ort_reference: Callable[[Path], Run]
) -> tuple[Run, np.ndarray]:
    """ORT's int4 run, and ORT's fp32 logits on the same tokens: how far int8 activations
    alone move the logits (the scale the int4 check is relative to)."""
    int4 = ort_reference(smollm2_int4_package)
    engine = Engine(open_package(smollm2_package), EngineConfig(max_context=MAX_CONTEXT))
    ids = prompt_ids(smollm2_package) + int4.tokens[:DECODE_STEPS]
    return int4, engine.prefill(ids, all_logits=True)
