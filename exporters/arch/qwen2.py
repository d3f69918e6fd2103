"""Qwen2 decoder (Qwen2.5, Qwen2.5-Coder): a llama with Q/K/V biases and no GGUF permutation."""

from __future__ import annotations

from typing import ClassVar

from edge.architectures import QWEN2, Declaration
from exporters.arch.llama import LlamaArchitecture


class Qwen2Architecture(LlamaArchitecture):
    declaration: ClassVar[Declaration] = QWEN2
