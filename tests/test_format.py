"""The edge package format: manifests round-trip, weights land at aligned offsets and map back
bit for bit, and invalid entries fail with `PackageError` naming the bad value."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from edge import format as fmt
from edge.errors import PackageError
from edge.format import (
    DTYPES,
    TENSOR_ALIGNMENT,
    FileEntry,
    Manifest,
    ModelSpec,
    PartEntry,
    TensorEntry,
    TokenizerInfo,
    WeightFileWriter,
    read_manifest,
    tensor_nbytes,
    write_manifest,
)
from edge.package_files import PackageFiles
from edge.quant_record import QuantizationInfo, StaticShapes, quantization_info

SPEC = ModelSpec(
    architecture="llama",
    vocab_size=64,
    hidden_size=16,
    intermediate_size=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=4,
    rope_theta=10000.0,
    rms_norm_eps=1e-5,
    max_position_embeddings=128,
    tie_word_embeddings=True,
)


def map_tensor(root: Path, entry: TensorEntry) -> np.ndarray:
    """`entry` mapped through the package's own file access (as `Package.tensor` maps it)."""
    return PackageFiles(root, [entry.file]).map(entry)


def _spec(**changes: object) -> ModelSpec:
    return dataclasses.replace(SPEC, **changes)


def _manifest() -> Manifest:
    tensors = (
        TensorEntry("embed.weight", "float32", (64, 16), "embed.bin", 0, 64 * 16 * 4),
        TensorEntry(
            "block.0.q.qweight", "int4", (16, 33), "block.0.bin", TENSOR_ALIGNMENT, 16 * 17
        ),
    )
    parts = (
        PartEntry("embed", "embed", "embed.onnx", tensors[:1], ("input_ids",), ("hidden.0",)),
        PartEntry(
            "block.0",
            "block",
            "block.0.onnx",
            tensors[1:],
            ("hidden.0", "past_key.0"),
            ("hidden.1", "present_key.0"),
            block_index=0,
        ),
    )
    tokenizer = TokenizerInfo("tokenizer.json", "{{ messages }}", "<s>", "</s>", (2, 0), 1)
    files = (FileEntry("embed.bin", 4096, "ab" * 32), FileEntry("tokenizer.json", 10, "cd" * 32))
    return Manifest(
        spec=SPEC,
        parts=parts,
        tokenizer=tokenizer,
        files=files,
        exporter={"edge_version": "0.1.0", "source": {"kind": "gguf"}},
        quantization={"scheme": {"name": "int4", "linear": {"bits": 4, "block_size": 32}}},
    )


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    """A manifest written to disk reads back as an equal Manifest (tuples, nesting, None)."""
    manifest = _manifest()
    write_manifest(tmp_path, manifest)
    assert read_manifest(tmp_path) == manifest
    bare = dataclasses.replace(manifest, quantization=None, exporter={})
    write_manifest(tmp_path, bare)
    assert read_manifest(tmp_path) == bare


def test_manifest_json_names_format_and_version(tmp_path: Path) -> None:
    """manifest.json says it is an edge package and which format version wrote it."""
    write_manifest(tmp_path, _manifest())
    data = json.loads((tmp_path / fmt.MANIFEST_FILE).read_text())
    assert data["format"] == fmt.FORMAT_NAME
    assert data["format_version"] == fmt.FORMAT_VERSION


@pytest.mark.parametrize("where", ["spec", "part", "tensor", "tokenizer", "file"])
def test_unknown_manifest_field_is_a_package_error(tmp_path: Path, where: str) -> None:
    """A manifest field this edge does not know is rejected, naming the field."""
    data = json.loads(fmt.manifest_to_json(_manifest()))
    target = {
        "spec": data["spec"],
        "part": data["parts"][0],
        "tensor": data["parts"][0]["tensors"][0],
        "tokenizer": data["tokenizer"],
        "file": data["files"][0],
    }[where]
    target["surprise_field"] = 1
    (tmp_path / fmt.MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(PackageError, match="surprise_field"):
        read_manifest(tmp_path)


def test_missing_manifest_field_is_a_package_error(tmp_path: Path) -> None:
    """A manifest missing a required section fails with PackageError, not KeyError."""
    data = json.loads(fmt.manifest_to_json(_manifest()))
    del data["tokenizer"]
    (tmp_path / fmt.MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(PackageError, match="tokenizer"):
        read_manifest(tmp_path)


def _packed_int4(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """int4 values packed two per byte (low nibble first), each row padded to whole bytes."""
    nibbles = rng.integers(0, 16, size=(rows, cols + cols % 2), dtype=np.uint8)
    nibbles[:, cols:] = 0
    return (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).astype(np.uint8)


def _tensors(rng: np.random.Generator) -> list[tuple[str, np.ndarray, str, tuple[int, ...]]]:
    """(name, stored array, dtype name, logical shape) for each dtype under test."""
    return [
        ("f32", rng.standard_normal((3, 7)).astype(np.float32), "float32", (3, 7)),
        ("f16", rng.standard_normal((4, 5, 2)).astype(np.float16), "float16", (4, 5, 2)),
        ("i8", rng.integers(-128, 128, size=(9,), dtype=np.int8), "int8", (9,)),
        ("i4", _packed_int4(rng, 5, 33), "int4", (5, 33)),
    ]


def test_weight_file_round_trips_every_dtype_at_aligned_offsets(tmp_path: Path) -> None:
    """Tensors written by WeightFileWriter map back bit-identical, each at an aligned offset."""
    rng = np.random.default_rng(0)
    items = _tensors(rng)
    with WeightFileWriter(tmp_path, "w.bin") as writer:
        entries = [
            writer.add(name, array, dtype=dtype, shape=shape) for name, array, dtype, shape in items
        ]
    previous_end = 0
    for entry, (name, array, dtype, shape) in zip(entries, items, strict=True):
        assert (entry.name, entry.dtype, entry.shape, entry.file) == (name, dtype, shape, "w.bin")
        assert entry.offset % TENSOR_ALIGNMENT == 0
        assert entry.offset >= previous_end
        previous_end = entry.offset + entry.nbytes
        assert entry.nbytes == tensor_nbytes(dtype, shape) == array.nbytes
        mapped = map_tensor(tmp_path, entry)
        assert mapped.dtype == DTYPES[dtype][0]
        np.testing.assert_array_equal(mapped, array)
    assert (tmp_path / "w.bin").stat().st_size == previous_end


def test_packed_int4_rows_round_up_to_whole_bytes() -> None:
    """A (5, 33) int4 tensor takes 17 bytes per row on disk: 85 bytes."""
    assert tensor_nbytes("int4", (5, 33)) == 5 * 17
    assert tensor_nbytes("uint4", (2, 3, 4)) == 6 * 2
    assert tensor_nbytes("int4", (7,)) == 4
    assert tensor_nbytes("float16", (5, 33)) == 5 * 33 * 2
    assert tensor_nbytes("int64", ()) == 8


def test_int4_maps_as_packed_uint8_rows(tmp_path: Path) -> None:
    """A packed int4 tensor maps as uint8 [rows, ceil(cols/2)] whose nibbles are the values."""
    rng = np.random.default_rng(1)
    nibbles = rng.integers(0, 16, size=(5, 33), dtype=np.uint8)
    padded = np.concatenate([nibbles, np.zeros((5, 1), np.uint8)], axis=1)
    packed = padded[:, 0::2] | (padded[:, 1::2] << 4)
    with WeightFileWriter(tmp_path, "q.bin") as writer:
        entry = writer.add("q", packed, dtype="int4", shape=(5, 33))
    mapped = map_tensor(tmp_path, entry)
    assert mapped.shape == (5, 17)
    unpacked = np.stack([mapped & 0xF, mapped >> 4], axis=-1).reshape(5, 34)[:, :33]
    np.testing.assert_array_equal(unpacked, nibbles)


def test_add_chunks_equals_add(tmp_path: Path) -> None:
    """Writing a tensor in row chunks gives the same entry and bytes as writing it whole."""
    rng = np.random.default_rng(2)
    array = rng.standard_normal((10, 6)).astype(np.float32)
    packed = _packed_int4(rng, 6, 33)
    with WeightFileWriter(tmp_path, "whole.bin") as writer:
        writer.add("pad", np.ones(3, np.float32))
        whole = [writer.add("a", array), writer.add("q", packed, dtype="int4", shape=(6, 33))]
    with WeightFileWriter(tmp_path, "chunks.bin") as writer:
        writer.add("pad", np.ones(3, np.float32))
        chunked = [
            writer.add_chunks("a", "float32", (10, 6), (array[i : i + 3] for i in range(0, 10, 3))),
            writer.add_chunks("q", "int4", (6, 33), [packed[:2], packed[2:]]),
        ]
    for a, b in zip(whole, chunked, strict=True):
        assert dataclasses.replace(a, file="x") == dataclasses.replace(b, file="x")
        np.testing.assert_array_equal(map_tensor(tmp_path, a), map_tensor(tmp_path, b))
    assert (tmp_path / "whole.bin").read_bytes() == (tmp_path / "chunks.bin").read_bytes()


def test_tensor_entry_with_wrong_nbytes_is_a_package_error() -> None:
    """A tensor entry whose byte length does not match its dtype and shape is rejected."""
    with pytest.raises(PackageError, match="w"):
        TensorEntry("w", "float32", (4, 4), "w.bin", 0, 63)
    with pytest.raises(PackageError):
        TensorEntry("q", "int4", (5, 33), "q.bin", 0, 5 * 33 // 2)


def test_tensor_entry_with_unknown_dtype_is_a_package_error() -> None:
    """An unknown dtype is rejected, naming it and the known ones."""
    with pytest.raises(PackageError, match=r"float8.*float32"):
        TensorEntry("w", "float8", (4,), "w.bin", 0, 4)


def test_writer_with_mismatched_packed_shape_is_a_package_error(tmp_path: Path) -> None:
    """Declaring a packed shape that the stored bytes do not fill fails instead of lying."""
    with WeightFileWriter(tmp_path, "bad.bin") as writer, pytest.raises(PackageError):
        writer.add("q", np.zeros((5, 16), np.uint8), dtype="int4", shape=(5, 33))


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"num_heads": 6, "num_kv_heads": 4}, "num_kv_heads"),
        ({"num_layers": 0}, "num_layers"),
        ({"vocab_size": -1}, "vocab_size"),
        ({"head_dim": 0}, "head_dim"),
    ],
)
def test_invalid_model_spec_is_a_package_error(changes: dict, named: str) -> None:
    """An impossible architecture spec is rejected, naming the bad field."""
    with pytest.raises(PackageError, match=named):
        _spec(**changes)


def test_manifest_with_invalid_spec_is_a_package_error(tmp_path: Path) -> None:
    """A manifest on disk with an impossible spec fails to read with PackageError."""
    data = json.loads(fmt.manifest_to_json(_manifest()))
    data["spec"]["num_layers"] = 0
    (tmp_path / fmt.MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(PackageError, match="num_layers"):
        read_manifest(tmp_path)


def _manifest_with_tensor(tmp_path: Path, **tensor: object) -> Path:
    data = json.loads(fmt.manifest_to_json(_manifest()))
    data["parts"][0]["tensors"][0].update(tensor)
    (tmp_path / fmt.MANIFEST_FILE).write_text(json.dumps(data))
    return tmp_path


def test_negative_shape_or_offset_is_a_package_error(tmp_path: Path) -> None:
    """A manifest tensor with a negative dimension or offset is rejected when read."""
    with pytest.raises(PackageError):
        read_manifest(_manifest_with_tensor(tmp_path, shape=[-1, 16], nbytes=-64))
    with pytest.raises(PackageError):
        read_manifest(_manifest_with_tensor(tmp_path, offset=-TENSOR_ALIGNMENT))


def test_scalar_packed_tensor_is_a_package_error(tmp_path: Path) -> None:
    """A 0-d int4 tensor in a manifest is a PackageError, not an IndexError."""
    with pytest.raises(PackageError):
        read_manifest(_manifest_with_tensor(tmp_path, dtype="int4", shape=[], nbytes=1))


@pytest.mark.parametrize(
    "record",
    [
        "int4",
        {"scheme": "int4"},
        {"scheme": {"name": 4}},
        {"scheme": {"name": "int4", "linear": "x"}},
        {"scheme": {"name": "int4", "linear": {"accuracy_level": "4"}}},
        {"scheme": {"name": "q"}, "static": "x"},
        {"scheme": {"name": "q"}, "static": {"chunks": [], "max_context": 8}},
        {"scheme": {"name": "q"}, "static": {"chunks": [1, -2], "max_context": 8}},
        {"scheme": {"name": "q"}, "static": {"chunks": [1], "max_context": None}},
        {"scheme": {"name": "int4"}, "tensors": {"w": "from Q4_0"}},
    ],
)
def test_malformed_quantization_records_are_package_errors(record: object) -> None:
    """The quantization section is typed once at load: a malformed one is refused there, not
    met later as an AttributeError inside the engine or the planner."""
    with pytest.raises(PackageError, match="quantization"):
        quantization_info(record)


def test_quantization_records_are_typed() -> None:
    info = quantization_info(
        {
            "scheme": {
                "name": "int4",
                "linear": {"bits": 4, "accuracy_level": 4},
                "embed": {"bits": 4, "accuracy_level": 4},  # a gather: rounds nothing
                "head": {"kind": "int8_rows"},
            },
            "static": {"chunks": [1, 32], "max_context": 256, "activation_bits": 8},
            "tensors": {"w": {"from": "Q4_0"}},
        }
    )
    assert info.scheme == "int4" and info.accuracy_levels == (4,) and info.per_token
    assert info.static == StaticShapes((1, 32), 256, activation_bits=8)
    assert quantization_info(None) == QuantizationInfo()


def test_default_spec_features_are_not_written() -> None:
    """A Llama-style package's manifest names no block feature, so an edge that predates
    those fields still reads it; a feature in use is written and read back."""
    manifest = _manifest()
    text = fmt.manifest_to_json(manifest)
    assert "sliding_window" not in text and "qk_norm" not in text
    assert fmt.manifest_from_json(text) == manifest
    gemma = dataclasses.replace(
        manifest, spec=dataclasses.replace(manifest.spec, qk_norm=True, embedding_scale=8.0)
    )
    text = fmt.manifest_to_json(gemma)
    assert '"qk_norm": true' in text and fmt.manifest_from_json(text).spec == gemma.spec
