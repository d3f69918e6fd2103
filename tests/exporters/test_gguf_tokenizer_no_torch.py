"""Exporting a GGUF must not need torch: the torch-free tokenizer path equals transformers'."""

from __future__ import annotations

from pathlib import Path

from exporters.sources import open_source
from exporters.tokenizer_export import CHECK_CORPUS


def test_torch_free_gguf_tokenizer_matches_transformers(smollm2_gguf: Path) -> None:
    """The tokenizer built without torch encodes, decodes and templates like AutoTokenizer."""
    source = open_source(smollm2_gguf)
    reference, built = source.reference_tokenizer(), source.tokenizer_without_torch()
    for text in CHECK_CORPUS:
        ids = reference(text)["input_ids"]
        assert built(text)["input_ids"] == ids
        assert built.decode(ids) == reference.decode(ids)
    assert built.chat_template == reference.chat_template
    assert (built.bos_token, built.eos_token) == (reference.bos_token, reference.eos_token)
