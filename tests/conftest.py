"""Shared fixtures: the real SmolLM2-135M-Instruct, pulled from PyPI and exported once per run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# The suite exports and copies dozens of packages: a packed-weight store for each would take
# gigabytes of disk (about twice each package). Loads pack on the heap, as they did before
# stores existed; tests/devices/backends/test_backend_ort_prepacked.py turns stores on.
os.environ["EDGE_PREPACKED_CACHE"] = "off"


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


@pytest.fixture(scope="session")
def standard_static_packages(
    smollm2_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """A two-block random Llama with SmolLM2's block sizes (hidden 576, 9 heads over 3
    key/value heads, a 512-token vocabulary) as float32 and as the standard-op static A8W8
    package (`static_ops="standard"`, 1- and 16-token graphs, a 64-slot cache): (fp32,
    static). Real-sized blocks make a planner price them like SmolLM2's; export takes ~1 s."""
    from exporters.export import ExportConfig, export
    from tests.tiny_gguf import write_tiny_gguf

    folder = tmp_path_factory.mktemp("standard-static")
    gguf = write_tiny_gguf(
        smollm2_package / "tokenizer.json",
        folder / "llama.gguf",
        hidden=576,
        ffn=1536,
        heads=9,
        kv_heads=3,
    )
    fp32 = export(gguf, folder / "fp32", ExportConfig(check_tokenizer=False), progress=False)
    return fp32, export(gguf, folder / "a8w8", _standard_static(), progress=False)


def _standard_static(attention_bits: int | None = None):  # -> ExportConfig
    """The export of `standard_static_packages`' static package (and of the mixed one)."""
    from exporters.export import ExportConfig

    return ExportConfig(
        quant="q-static-int8",
        static_chunks=(1, 16),
        static_context=64,
        static_activation_bits=8,
        static_ops="standard",
        calibration_tokens=64,
        check_tokenizer=False,
        static_attention_bits=attention_bits,
    )


@pytest.fixture(scope="session")
def mixed_static_package(standard_static_packages: tuple[Path, Path]) -> Path:
    """The standard-op static package's export again with its attention products (queries,
    keys, values, probabilities) at 16 bits, linear layers still at 8: the mixed A8/A16
    precision of Qualcomm's HTP LLMs (`static_attention_bits=16`; export takes ~0.2 s)."""
    from exporters.export import export

    folder = standard_static_packages[1].parent
    config = _standard_static(attention_bits=16)
    return export(folder / "llama.gguf", folder / "a8w8-a16", config, progress=False)
