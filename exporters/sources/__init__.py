"""Source readers: a GGUF file or a Hugging Face folder, behind one `Source` interface."""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import UnsupportedModelError
from edge.format import MANIFEST_FILE
from exporters.sources.base import Source
from exporters.sources.gguf_source import GGUFSource, is_gguf
from exporters.sources.hf_source import HFSource, is_hf_folder
from exporters.sources.package_source import PackageSource

# Exporting reads tokenizers with transformers, which needs no torch for that; without torch it
# prints "PyTorch was not found. Models won't be available..." at import, which misleads an
# edge user (edge never needs its models). A user's own setting wins.
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def open_source(path: str | os.PathLike[str]) -> Source:
    """Open `path` as a GGUF file or Hugging Face folder, or say clearly why it is neither."""
    path = Path(path)
    if not path.exists():
        raise UnsupportedModelError(f"{path} does not exist")
    if is_gguf(path):
        return GGUFSource(path)
    if (path / MANIFEST_FILE).is_file():
        return PackageSource(path)
    if is_hf_folder(path):
        return HFSource(path)
    raise UnsupportedModelError(
        f"{path} is neither a GGUF file nor a Hugging Face folder (config.json + safetensors)"
    )


__all__ = ["GGUFSource", "HFSource", "Source", "open_source"]
