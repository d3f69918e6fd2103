"""Hugging Face model folders: `config.json`, `*.safetensors` and tokenizer files.

Safetensors is read directly (8-byte header length, JSON header, raw bytes) through a memory
map, so bf16 checkpoints load without torch and only the tensor being exported is paged in.
"""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from edge.architectures import DECLARATIONS
from edge.errors import UnsupportedModelError
from edge.format import TokenizerInfo
from exporters.linear import RowWeight
from exporters.tokenizer_export import export_tokenizer

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16}


def gguf_style_name(hf_name: str, layer_names: dict[str, str] | None = None) -> str | None:
    """`layer_names`: an architecture's names that differ from Llama's (its declaration)."""
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    match = _LAYER.match(hf_name)
    names = {**_LAYER_NAMES, **(layer_names or {})}
    if match and match.group(2) in names:
        return f"blk.{match.group(1)}.{names[match.group(2)]}"
    return None


def is_hf_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


class HFSource:
    """A Hugging Face checkpoint folder."""

    kind = "hf"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not is_hf_folder(self.path):
            raise UnsupportedModelError(
                f"{self.path} is not a Hugging Face folder (no config.json)"
            )
        self._config = _read_config(self.path / "config.json")
        self.architecture = str(self._config.get("model_type"))
        known = DECLARATIONS.get(self.architecture)
        layer_names = known.hf_layer_names if known else {}
        # Gemma's norms compute x * (1 + w): stored with the 1 added, as llama.cpp's GGUF does
        self._norm_offset = known.hf_norm_offset if known else 0.0
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise UnsupportedModelError(f"{self.path} has no .safetensors weights")
        self._index: dict[str, tuple[Path, dict[str, Any], int]] = {}
        for file in files:
            header, data_start = _read_header(file)
            for hf_name, info in header.items():
                name = gguf_style_name(hf_name, layer_names)
                if name is not None:
                    self._index[name] = (file, info, data_start)
        if self._config.get("tie_word_embeddings") and "output.weight" in self._index:
            del self._index["output.weight"]  # tied: the head reuses the embedding

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def has(self, name: str) -> bool:
        return name in self._index

    def layout(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype, shape) of a tensor, from the header alone."""
        if name not in self._index:
            raise UnsupportedModelError(f"{self.path} lacks tensor {name}")
        info = self._index[name][1]
        return str(info["dtype"]), tuple(int(d) for d in info["shape"])

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        if name not in self._index:
            raise UnsupportedModelError(f"{self.path} lacks tensor {name}")
        file, info, data_start = self._index[name]
        if info["dtype"] not in _DTYPES:
            raise UnsupportedModelError(f"{name}: safetensors dtype {info['dtype']} unsupported")
        begin, _ = info["data_offsets"]
        raw = np.memmap(
            file,
            dtype=_DTYPES[info["dtype"]],
            mode="r",
            offset=data_start + begin,
            shape=tuple(info["shape"]),
        )
        raw = raw if rows is None else raw[rows]
        if info["dtype"] == "BF16":
            values = (raw.astype(np.uint32) << 16).view(np.float32)
        else:
            values = np.array(raw, dtype=np.float32)
        if self._norm_offset and name.endswith("norm.weight"):
            values = values + np.float32(self._norm_offset)
        return values

    def read_rows(self, name: str, rows: slice | None = None) -> RowWeight:
        return RowWeight(
            self._index[name][1]["dtype"] if name in self._index else "F32",
            values=self.read(name, rows),
        )

    def write_tokenizer(self, root: Path, check: bool) -> TokenizerInfo:
        return export_tokenizer(self.reference_tokenizer(), root, check)

    def reference_tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(self.path)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "hf",
            "folder": self.path.name,
            "architectures": self._config.get("architectures"),
        }


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UnsupportedModelError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise UnsupportedModelError(f"{path} is not a JSON object, so not a model config")
    return config


def _read_header(file: Path) -> tuple[dict[str, Any], int]:
    with open(file, "rb") as fh:
        head = fh.read(8)
        if len(head) != 8:
            raise UnsupportedModelError(f"{file} is too short to be a safetensors file")
        (length,) = struct.unpack("<Q", head)
        if length > 100 << 20:
            raise UnsupportedModelError(f"{file}: implausible safetensors header ({length} bytes)")
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UnsupportedModelError(f"{file}: bad safetensors header: {exc}") from exc
    if not isinstance(header, dict):
        raise UnsupportedModelError(f"{file}: safetensors header is not a JSON object")
    header.pop("__metadata__", None)
    return header, 8 + length
