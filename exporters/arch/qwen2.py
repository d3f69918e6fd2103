"""Qwen2 decoder (Qwen2.5, Qwen2.5-Coder): a llama with Q/K/V biases and no GGUF permutation."""

from __future__ import annotations

from typing import ClassVar

from exporters.arch.llama import LlamaArchitecture


class Qwen2Architecture(LlamaArchitecture):
    name: ClassVar[str] = "qwen2"
    # llama.cpp runs qwen2 with NEOX (half-rotation) rope, so Q/K rows are stored as in HF.
    gguf_permutes_qk: ClassVar[bool] = False
    default_attention_bias: ClassVar[bool] = True
