"""GGUF files (llama.cpp's format), read tensor by tensor through the `gguf` package."""

from __future__ import annotations

import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import UnsupportedModelError
from edge.format import TokenizerInfo
from exporters.linear import RowWeight
from exporters.tokenizer_export import export_tokenizer
from quant import is_lossless, repack_gguf

GGUF_MAGIC = b"GGUF"

# GGUF metadata key (after the "<arch>." prefix) -> Hugging Face config key
_CONFIG_KEYS = {
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "rope.freq_base": "rope_theta",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "context_length": "max_position_embeddings",
    "attention.key_length": "head_dim",
    "attention.sliding_window": "sliding_window",
}


def is_gguf(path: Path) -> bool:
    if not path.is_file():
        return False
    with open(path, "rb") as fh:
        return fh.read(4) == GGUF_MAGIC


class GGUFSource:
    """A GGUF file: metadata as a config dict, tensors dequantized to fp32 on demand."""

    kind = "gguf"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        import gguf  # export-only dependency

        self.path = Path(path)
        if not is_gguf(self.path):
            raise UnsupportedModelError(f"{self.path} is not a GGUF file (bad magic)")
        try:
            self._reader = gguf.GGUFReader(self.path)
        except (ValueError, OSError, IndexError) as exc:
            raise UnsupportedModelError(f"{self.path} is not a readable GGUF file: {exc}") from exc
        self._gguf = gguf
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.architecture = str(self._field("general.architecture"))

    def _field(self, key: str, default: Any = None) -> Any:
        field = self._reader.fields.get(key)
        return default if field is None else field.contents()

    def config(self) -> dict[str, Any]:
        arch = self.architecture
        config: dict[str, Any] = {"model_type": arch}
        for suffix, hf_key in _CONFIG_KEYS.items():
            value = self._field(f"{arch}.{suffix}")
            if value is not None:
                config[hf_key] = value
        embed = self._tensors.get("token_embd.weight")
        if embed is None:
            raise UnsupportedModelError(f"{self.path} has no token_embd.weight tensor")
        config["vocab_size"] = int(embed.shape[1])  # GGUF shapes are reversed: [H, V]
        config["tie_word_embeddings"] = "output.weight" not in self._tensors
        scaling = self._field(f"{arch}.rope.scaling.type")
        if scaling not in (None, "none"):
            config["rope_scaling"] = {"rope_type": scaling}
        return config

    def has(self, name: str) -> bool:
        return name in self._tensors

    def layout(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(GGML type, numpy shape) of a tensor, from the header alone."""
        tensor = self._tensors.get(name)
        if tensor is None:
            raise UnsupportedModelError(f"{self.path} lacks tensor {name}")
        return tensor.tensor_type.name, tuple(int(d) for d in reversed(tensor.shape))

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        tensor = self._tensors.get(name)
        if tensor is None:
            raise UnsupportedModelError(f"{self.path} lacks tensor {name}")
        data = tensor.data if rows is None else tensor.data[rows]
        # gguf returns numpy order ([out, in]); quantized rows dequantize independently
        values = np.asarray(
            self._gguf.quants.dequantize(data, tensor.tensor_type), dtype=np.float32
        )
        self._release(tensor)
        return values

    def read_rows(self, name: str, rows: slice | None = None) -> RowWeight:
        """Q4_0/Q8_0 come back packed (bit-exact repack); other types dequantized to fp32."""
        tensor = self._tensors.get(name)
        if tensor is None:
            raise UnsupportedModelError(f"{self.path} lacks tensor {name}")
        kind = tensor.tensor_type.name
        if not is_lossless(kind):
            return RowWeight(kind, values=self.read(name, rows))
        raw = tensor.data if rows is None else tensor.data[rows]
        packed = repack_gguf(np.ascontiguousarray(raw), kind, (raw.shape[0], int(tensor.shape[0])))
        self._release(tensor)
        return RowWeight(kind, packed=packed)

    def _release(self, tensor: Any) -> None:
        """Drop the tensor's pages from this process's memory once dequantized.

        The whole file is memory-mapped; without this every byte read stays resident, and
        exporting a 1.1 GB GGUF would count 1.1 GB more peak RSS than one block needs.
        """
        mapped = getattr(self._reader.data, "_mmap", None)
        if mapped is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        start = tensor.data_offset - tensor.data_offset % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_DONTNEED, start, tensor.data_offset + tensor.n_bytes - start)

    def write_tokenizer(self, root: Path, check: bool) -> TokenizerInfo:
        return export_tokenizer(self.reference_tokenizer(), root, check)

    def reference_tokenizer(self) -> Any:
        """transformers' own GGUF tokenizer; without torch, the same converter called directly.

        transformers 5 reads GGUF metadata with a torch-based reader, but its tokenizer
        converter needs only `tokenizers`; exporting must not require torch.
        """
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)
        except ImportError:
            return self.tokenizer_without_torch()

    def tokenizer_without_torch(self) -> Any:
        from transformers import PreTrainedTokenizerFast
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )

        meta = {
            key: self._field(key) for key in self._reader.fields if key.startswith("tokenizer.")
        }
        groups = {
            group: {
                name: meta[f"tokenizer.{key}"]
                for key, name in renames.items()
                if f"tokenizer.{key}" in meta
            }
            for group, renames in GGUF_TOKENIZER_MAPPING.items()
        }
        tokens, config = groups["tokenizer"], groups["tokenizer_config"]
        if tokens.get("tokenizer_type") == "llama":
            config.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece
        for name, key in (
            ("bos_token", "bos_token_id"),
            ("eos_token", "eos_token_id"),
            ("unk_token", "unknown_token_id"),
            ("pad_token", "padding_token_id"),
        ):
            token_id = meta.get(f"tokenizer.ggml.{key}")
            config[name] = tokens["tokens"][token_id] if token_id is not None else None
        backend, _ = convert_gguf_tokenizer(self.architecture, tokens)
        return PreTrainedTokenizerFast(tokenizer_object=backend, **config)

    def describe(self) -> dict[str, Any]:
        types = sorted({t.tensor_type.name for t in self._reader.tensors})
        return {
            "kind": "gguf",
            "file": self.path.name,
            "tensor_types": types,
            "name": self._field("general.name"),
        }
