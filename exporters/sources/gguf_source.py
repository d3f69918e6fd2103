"""GGUF files (llama.cpp's format), read tensor by tensor through the `gguf` package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import UnsupportedModelError

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

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        tensor = self._tensors.get(name)
        if tensor is None:
            raise UnsupportedModelError(f"{self.path} lacks tensor {name}")
        data = tensor.data if rows is None else tensor.data[rows]
        # gguf returns numpy order ([out, in]); quantized rows dequantize independently
        values = self._gguf.quants.dequantize(data, tensor.tensor_type)
        return np.asarray(values, dtype=np.float32)

    def reference_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path.parent, gguf_file=self.path.name)

    def describe(self) -> dict[str, Any]:
        types = sorted({t.tensor_type.name for t in self._reader.tensors})
        return {"kind": "gguf", "file": self.path.name, "tensor_types": types,
                "name": self._field("general.name")}
