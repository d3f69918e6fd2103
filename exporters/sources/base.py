"""What an exporter needs from a source model, whatever its file format.

Tensor names are GGUF's short names (`token_embd.weight`, `blk.3.attn_q.weight`, ...) and matmul
weights are [out, in], as both GGUF (numpy order) and Hugging Face store them; values are fp32.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol


class Source(Protocol):
    kind: str  # "gguf" or "hf"
    path: Path
    architecture: str

    def config(self) -> dict[str, Any]:
        """Hyper-parameters in Hugging Face `config.json` vocabulary."""

    def has(self, name: str) -> bool: ...

    def read(self, name: str, rows: slice | None = None) -> Any:
        """The tensor (optionally a slice of its rows) as a float32 numpy array."""

    def read_rows(self, name: str, rows: slice | None = None) -> Any:
        """A linear weight as an `exporters.linear.RowWeight` (packed when lossless)."""

    def write_tokenizer(self, root: Path, check: bool) -> Any:
        """Write `tokenizer.json` into `root`; return its `TokenizerInfo`. With `check`,
        refuse (TokenizerMismatchError) unless it behaves exactly like the source's."""

    def describe(self) -> dict[str, Any]:
        """What to record in the manifest about where the weights came from."""
