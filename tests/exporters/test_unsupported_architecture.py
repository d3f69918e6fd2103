"""A GGUF of an architecture edge has no declaration for is refused by name.

(Replaces test_export_faults' gemma3 case now that gemma3 exports: a real file of an
unsupported architecture is not pulled, so a minimal one is written with `gguf`.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.errors import UnsupportedModelError
from exporters.arch import ARCHITECTURES
from exporters.export import export


def _write_gguf(path: Path, architecture: str) -> Path:
    import gguf

    writer = gguf.GGUFWriter(path, architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_unknown_architecture_names_itself_and_the_supported_ones(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    source = _write_gguf(tmp_path / "mamba.gguf", "mamba")
    out = tmp_path / "out"
    with pytest.raises(UnsupportedModelError, match="'mamba'") as info:
        export(source, out, progress=False)
    for name in ("llama", "qwen2", "gemma3", *ARCHITECTURES):
        assert name in str(info.value)
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["mamba.gguf"]
