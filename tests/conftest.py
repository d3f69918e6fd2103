"""Shared fixtures: the real SmolLM2-135M-Instruct, pulled from PyPI and exported once per run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct GGUF (Q4_1), pulled into edge's cache on first use."""
    from edge.models.pull import pull

    return pull("smollm2-135m", progress=False)


@pytest.fixture(scope="session")
def smollm2_package(smollm2_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SmolLM2 exported to an fp32 edge package (tests must not modify it: copy it first)."""
    from exporters.export import export

    return export(smollm2_gguf, tmp_path_factory.mktemp("pkg") / "smollm2", progress=False)


@pytest.fixture(scope="session")
def smollm2_reference(smollm2_gguf: Path):
    """transformers' own fp32 model and tokenizer for the same GGUF: the reference."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": smollm2_gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(smollm2_gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        smollm2_gguf.parent, dtype=torch.float32, **kwargs
    ).eval()
    return model, tokenizer
