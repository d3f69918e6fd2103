"""Architectures edge can export, found by the name sources report (GGUF `general.architecture`,
Hugging Face `model_type`)."""

from __future__ import annotations

from edge.errors import UnsupportedModelError
from exporters.arch.gemma3 import Gemma3Architecture
from exporters.arch.llama import LlamaArchitecture
from exporters.arch.qwen2 import Qwen2Architecture

ARCHITECTURES: dict[str, LlamaArchitecture] = {
    name: arch
    for arch in (LlamaArchitecture(), Qwen2Architecture(), Gemma3Architecture())
    for name in (arch.name, *arch.declaration.aliases)
}


def get_architecture(name: str) -> LlamaArchitecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise UnsupportedModelError(
            f"architecture {name!r} is not supported; supported: {sorted(ARCHITECTURES)}"
        ) from None
