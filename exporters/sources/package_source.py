"""An fp32 edge package as a source, so `edge quantize` needs neither the original GGUF nor
Hugging Face folder. Fused tensors (Q/K/V, gate/up) are split back into the source names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edge.architectures import FEATURES_KEY, spec_features
from edge.errors import PackageError
from edge.format import TokenizerInfo
from edge.package import open_package
from exporters.linear import RowWeight

MATMUL_ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


class PackageSource:
    """Reads float32 weights back out of a verified, unquantized edge package."""

    kind = "edge"

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.package = open_package(self.path, verify="full")
        manifest = self.package.manifest
        if manifest.quantization is not None:
            raise PackageError(
                f"{self.path} is already quantized; quantize the float32 package "
                "or export again from the original model"
            )
        self.spec = manifest.spec
        self.architecture = self.spec.architecture
        self._tensors = {t.name: t for p in manifest.parts for t in p.tensors}

    def config(self) -> dict[str, Any]:
        s = self.spec
        return {
            "model_type": s.architecture,
            "vocab_size": s.vocab_size,
            "hidden_size": s.hidden_size,
            "intermediate_size": s.intermediate_size,
            "num_hidden_layers": s.num_layers,
            "num_attention_heads": s.num_heads,
            "num_key_value_heads": s.num_kv_heads,
            "head_dim": s.head_dim,
            "rope_theta": s.rope_theta,
            "rms_norm_eps": s.rms_norm_eps,
            "max_position_embeddings": s.max_position_embeddings,
            "tie_word_embeddings": s.tie_word_embeddings,
            "attention_bias": s.attention_bias,
            FEATURES_KEY: spec_features(s),
        }

    def _split(self, name: str) -> tuple[str, slice, bool] | None:
        """(stored tensor, column range, transposed) holding the source tensor `name`."""
        pieces = name.split(".")  # blk.3.attn_q.weight
        if len(pieces) != 4 or pieces[0] != "blk" or pieces[2] not in MATMUL_ROLES:
            return (name, slice(None), False) if name in self._tensors else None
        prefix, role, kind = ".".join(pieces[:2]), pieces[2], pieces[3]
        s = self.spec
        q, kv, f = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.intermediate_size
        fused = {
            "attn_q": ("attn_qkv", slice(0, q)),
            "attn_k": ("attn_qkv", slice(q, q + kv)),
            "attn_v": ("attn_qkv", slice(q + kv, q + 2 * kv)),
            "ffn_gate": ("ffn_gate_up", slice(0, f)),
            "ffn_up": ("ffn_gate_up", slice(f, 2 * f)),
        }
        stored, columns = fused.get(role, (role, slice(None)))
        target = f"{prefix}.{stored}.{kind}"
        return (target, columns, kind == "weight") if target in self._tensors else None

    def has(self, name: str) -> bool:
        return self._split(name) is not None

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        found = self._split(name)
        if found is None:
            raise PackageError(f"{self.path} has no tensor for {name}")
        stored, columns, transposed = found
        data = self.package.tensor(self._tensors[stored])
        if transposed:  # stored [K, N] for MatMul; sources hand out rows = outputs
            data = data[:, columns].T
        elif data.ndim == 1:
            data = data[columns]
        data = data if rows is None else data[rows]
        return np.array(data, dtype=np.float32)

    def read_rows(self, name: str, rows: slice | None = None) -> RowWeight:
        return RowWeight("F32", values=self.read(name, rows))

    def write_tokenizer(self, root: Path, check: bool) -> TokenizerInfo:
        info = self.package.manifest.tokenizer
        shutil.copyfile(self.path / info.file, root / info.file)
        return info

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "edge",
            "package": self.path.name,
            "from": self.package.manifest.exporter.get("source"),
        }
