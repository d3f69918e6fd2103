"""`exporters.layout`: the package an export would write, from the source's headers alone,
is the export's package part for part and byte for byte in every size and offset (what
`edge plan` plans on before a model is exported)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.format import Manifest, read_manifest
from edge.package import open_package
from exporters.export import ExportConfig, export
from exporters.layout import write_layout
from tests.tiny_gguf import write_tiny_gguf

CONFIGS = {
    "float32": ExportConfig(),
    "int8": ExportConfig(quant="int8"),
    "int4": ExportConfig(quant="int4"),
    "int4 asymmetric AWQ": ExportConfig(
        quant="int4", method="awq", symmetric=False, calibration_tokens=16
    ),
    "int4-mixed": ExportConfig(quant="int4-mixed"),
    "w8a8": ExportConfig(quant="w8a8"),
    "int4 + int8 prefill": ExportConfig(quant="int4", prefill_int8=True),
}
# Q4_0 and Q8_0 are repacked losslessly (kept, or kept at 8 bits under an int4 request); a
# block whose Q, K and V differ in type is dequantized and quantized to the layout asked.
MIXED_TYPES = {
    "attn_q.weight": "Q4_0",
    "attn_k.weight": "Q4_0",
    "attn_v.weight": "Q8_0",
    "ffn_gate.weight": "Q4_0",
    "ffn_up.weight": "Q4_0",
    "ffn_down.weight": "Q8_0",
    "output.weight": "Q8_0",
}


def layout_of(manifest: Manifest) -> tuple[Any, ...]:
    """What the planner reads of a package: parts, their graphs' interfaces, every tensor's
    name, type, shape, file, offset and size, and every file's size."""
    parts = tuple(
        (p.name, p.kind, p.inputs, p.outputs, p.block_index, p.prefill_graph, p.tensors)
        for p in manifest.parts
    )
    files = tuple((f.path, f.size) for f in manifest.files if f.path != "tokenizer.json")
    tokenizer = next(f.size for f in manifest.files if f.path == "tokenizer.json")
    return parts, files, tokenizer, manifest.spec, manifest.quant.scheme


@pytest.fixture(scope="module", params=["float32 GGUF", "Q4_0 + Q8_0 GGUF"])
def tiny_source(
    request: pytest.FixtureRequest, smollm2_package: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    pytest.importorskip("gguf")
    types = MIXED_TYPES if request.param.startswith("Q4_0") else None
    folder = tmp_path_factory.mktemp("layout")
    return write_tiny_gguf(smollm2_package / "tokenizer.json", folder / "tiny.gguf", types)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_the_layout_is_the_exports(tiny_source: Path, name: str, tmp_path: Path) -> None:
    config = CONFIGS[name]
    exported = read_manifest(export(tiny_source, tmp_path / "pkg", config, progress=False))
    laid_out = read_manifest(write_layout(tiny_source, _empty(tmp_path / "layout"), config))
    assert layout_of(laid_out) == layout_of(exported)


def test_a_layout_opens_as_a_package_and_holds_no_weights(
    tiny_source: Path, tmp_path: Path
) -> None:
    """Its weight files are sparse (the planner opens them; nothing reads their bytes)."""
    root = write_layout(tiny_source, _empty(tmp_path / "layout"), CONFIGS["float32"])
    package = open_package(root, verify="sizes")
    try:
        weights = [root / f.path for f in package.manifest.files if f.path.endswith(".bin")]
        assert weights and all(p.stat().st_blocks == 0 for p in weights)
        assert sum(p.stat().st_size for p in weights) > 2 * 512 * 64 * 4  # embedding + head
    finally:
        package.close()


def test_a_static_int8_package_is_not_laid_out(tiny_source: Path, tmp_path: Path) -> None:
    """Its activation ranges come from running the model: it must be exported."""
    with pytest.raises(ValueError, match="calibrated"):
        write_layout(tiny_source, _empty(tmp_path / "x"), ExportConfig(quant="q-static-int8"))


def _empty(folder: Path) -> Path:
    folder.mkdir()
    return folder
