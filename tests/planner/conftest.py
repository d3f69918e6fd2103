"""Synthetic manifests for the planner's unit tests: the planner reads only the manifest, so a
model of any shape (a 1.5B int4, a static int8 NPU package) is a few dataclasses, no weights.

Tensor names, dtypes and shapes follow the exporters (GGUF-style names, MatMulNBits `.q4`/
`.q8` + `.scales`, `GatherBlockQuantized` `.gather` tables, static QDQ `.int8` + `.scale`).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from edge.format import (
    TENSOR_ALIGNMENT,
    FileEntry,
    Manifest,
    ModelSpec,
    PartEntry,
    TensorEntry,
    TokenizerInfo,
    tensor_nbytes,
)

BLOCK = 32


class _Writer:
    """Assigns aligned offsets per file, like WeightFileWriter, without writing anything."""

    def __init__(self) -> None:
        self.ends: dict[str, int] = {}

    def add(self, file: str, name: str, dtype: str, shape: tuple[int, ...]) -> TensorEntry:
        offset = -(-self.ends.get(file, 0) // TENSOR_ALIGNMENT) * TENSOR_ALIGNMENT
        nbytes = tensor_nbytes(dtype, shape)
        self.ends[file] = offset + nbytes
        return TensorEntry(name, dtype, shape, file, offset, nbytes)


def _linear(w: _Writer, file: str, name: str, k: int, n: int, quant: str) -> list[TensorEntry]:
    if quant == "fp32":
        return [w.add(file, name, "float32", (k, n))]
    if quant == "static":
        return [
            w.add(file, f"{name}.int8", "int8", (k, n)),
            w.add(file, f"{name}.scale", "float32", (n,)),
        ]
    bits = 8 if quant == "int8" else 4
    blocks = k // BLOCK
    return [
        w.add(file, f"{name}.q{bits}", "uint8", (n, blocks, BLOCK * bits // 8)),
        w.add(file, f"{name}.scales", "float32", (n * blocks,)),
    ]


def synthetic_manifest(
    *,
    layers: int = 4,
    hidden: int = 256,
    ffn: int = 512,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 4096,
    quant: str = "int4",
    tokenizer_bytes: int = 2_000_000,
    max_position: int = 8192,
) -> Manifest:
    """A manifest of a llama-shaped model; quant: "fp32", "int4" or "static" (int8 QDQ
    with fixed-shape graphs for 1- and 64-token steps, as `--quant q-static-int8` writes)."""
    head_dim = hidden // heads
    spec = ModelSpec(
        "llama",
        vocab,
        hidden,
        ffn,
        layers,
        heads,
        kv_heads,
        head_dim,
        1e4,
        1e-5,
        max_position,
        tie_word_embeddings=False,
    )
    w = _Writer()
    static = ((1, "{}.s1.onnx"), (64, "{}.s64.onnx")) if quant == "static" else ()

    def part(
        name: str, kind: str, tensors: list[TensorEntry], index: int | None = None
    ) -> PartEntry:
        graphs = tuple((s, f.format(name)) for s, f in static)
        return PartEntry(
            name, kind, f"{name}.onnx", tuple(tensors), ("in",), ("out",), index, graphs
        )

    if quant == "fp32":
        embed = [w.add("embed.bin", "token_embd.weight", "float32", (vocab, hidden))]
    elif quant == "static":
        embed = [
            w.add("embed.bin", "token_embd.weight.int8", "int8", (vocab, hidden)),
            w.add("embed.bin", "token_embd.weight.scale", "float32", (vocab,)),
        ]
    else:
        embed = [
            w.add("embed.bin", "token_embd.gather", "uint8", (vocab, hidden // 2)),
            w.add("embed.bin", "token_embd.gather_scales", "float32", (vocab, hidden // BLOCK)),
        ]
    parts = [part("embed", "embed", embed)]
    qkv = (heads + 2 * kv_heads) * head_dim
    for i in range(layers):
        file = f"block.{i:03d}.bin"
        tensors = [
            w.add(file, f"blk.{i}.attn_norm.weight", "float32", (hidden,)),
            w.add(file, f"blk.{i}.ffn_norm.weight", "float32", (hidden,)),
        ]
        for name, k, n in (
            ("attn_qkv", hidden, qkv),
            ("attn_output", heads * head_dim, hidden),
            ("ffn_gate_up", hidden, 2 * ffn),
            ("ffn_down", ffn, hidden),
        ):
            tensors += _linear(w, file, f"blk.{i}.{name}.weight", k, n, quant)
        parts.append(part(f"block.{i}", "block", tensors, i))
    head_quant = "int8" if quant == "int4" else quant
    head = [
        w.add("head.bin", "output_norm.weight", "float32", (hidden,)),
        *_linear(w, "head.bin", "output.weight", hidden, vocab, head_quant),
    ]
    parts.append(part("head", "head", head))
    quantization = None
    if quant == "int4":
        quantization = {"scheme": {"name": "int4"}}
    elif quant == "static":
        quantization = {
            "scheme": {"name": "q-static-int8"},
            "static": {"chunks": [1, 64], "batch": 1, "max_context": 1024, "activation_bits": 8},
        }
    files = tuple(FileEntry(f, size, "0" * 64) for f, size in w.ends.items())
    graphs = tuple(FileEntry(g, 0, "0" * 64) for p in parts for g in p.graph_files)
    return Manifest(
        spec,
        tuple(parts),
        TokenizerInfo("tokenizer.json", None, None, None, (2,)),
        (*files, *graphs, FileEntry("tokenizer.json", tokenizer_bytes, "0" * 64)),
        quantization=quantization,
    )


@pytest.fixture(scope="session")
def manifest_factory() -> Callable[..., Manifest]:
    """`manifest_factory(layers=28, hidden=1536, ...)`: see `synthetic_manifest`."""
    return synthetic_manifest


@pytest.fixture(scope="session")
def qwen15_shaped() -> Manifest:
    """Qwen2.5-1.5B's shapes, int4 blocks and an 8-bit head (what `edge export --quant int4`
    makes of it): 28 layers, hidden 1536, MLP 8960, 12 heads / 2 KV heads, 151,936 tokens."""
    return synthetic_manifest(
        layers=28,
        hidden=1536,
        ffn=8960,
        heads=12,
        kv_heads=2,
        vocab=151936,
        tokenizer_bytes=11_418_266,
        max_position=32768,
    )


@pytest.fixture(scope="session")
def planner_int4_package(smollm2_package, tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2 int4 as `edge quantize --quant int4` makes it (MatMulNBits blocks, 8-bit
    tied head, GatherBlockQuantized embedding)."""
    from exporters.export import ExportConfig, quantize_package

    return quantize_package(
        smollm2_package,
        tmp_path_factory.mktemp("planner") / "int4",
        ExportConfig(quant="int4"),
        progress=False,
    )


@pytest.fixture(scope="session")
def planner_w8a8_package(smollm2_package, tmp_path_factory: pytest.TempPathFactory):
    """SmolLM2 w8a8 (int8 rows on MatMulIntegerToFloat, padded two-token steps)."""
    from exporters.export import ExportConfig, quantize_package

    return quantize_package(
        smollm2_package,
        tmp_path_factory.mktemp("planner") / "w8a8",
        ExportConfig(quant="w8a8"),
        progress=False,
    )
