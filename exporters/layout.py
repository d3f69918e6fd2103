"""The package an export would write, without reading a weight or quantizing one: what
`edge plan MODEL` plans on before anything is exported.

The exporter itself runs (`exporters.export.write_weight_parts`: the same parts, fusions,
tensor names, layouts and graphs), over a source that answers from its header alone
(`ShapeSource`: a weight is its type and shape, a lossless GGUF Q4_0/Q8_0 weight the layout
its repack takes) into weight files that are only sized (`SizedWeightWriter`: sparse files of
the exact length, every offset exact). The tokenizer is written for real (its size weighs on
the planner's memory model); AWQ is left out (it rescales values, never a layout). The result
opens as a package (`open_package(..., verify="sizes")`) whose weight files read as zeros and
whose manifest lists no real digest for them, so it can be planned on, never run.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

import edge.format as fmt
from edge.format import Manifest, TensorEntry, WeightFileWriter
from exporters.arch import get_architecture
from exporters.export import STATIC, ExportConfig, write_weight_parts
from exporters.linear import RowWeight
from exporters.sources import Source, open_source
from exporters.tokenizer_export import export_tokenizer
from quant import is_lossless
from quant.gguf_repack import repacked_layout

# The digest a sized (never written) weight file is listed with: verify="sizes" only.
UNWRITTEN_SHA256 = "0" * 64


class ShapeSource:
    """A source whose weights are only their types and shapes (see the module docstring)."""

    def __init__(self, source: Source) -> None:
        if not hasattr(source, "layout"):
            raise ValueError(f"a {source.kind} source cannot be laid out without reading it")
        self.source = source
        self.kind, self.path, self.architecture = source.kind, source.path, source.architecture

    def config(self) -> dict[str, Any]:
        return self.source.config()

    def has(self, name: str) -> bool:
        return self.source.has(name)

    def _shape(self, name: str, rows: slice | None) -> tuple[str, tuple[int, ...]]:
        kind, shape = self.source.layout(name)  # type: ignore[attr-defined]
        if rows is not None:
            shape = (len(range(shape[0])[rows]), *shape[1:])
        return kind, shape

    def read(self, name: str, rows: slice | None = None) -> np.ndarray:
        return np.zeros(self._shape(name, rows)[1], np.float32)

    def read_rows(self, name: str, rows: slice | None = None) -> RowWeight:
        kind, (n, k) = self._shape(name, rows)
        if is_lossless(kind):
            return RowWeight(kind, packed=repacked_layout(kind, (n, k)))
        return RowWeight.of_shape(kind, n, k)

    def write_tokenizer(self, root: Path, check: bool) -> Any:
        """A GGUF's tokenizer through the converter alone: transformers' own GGUF loader would
        parse the whole file a second time (seconds for a 150k-token vocabulary)."""
        converted = getattr(self.source, "tokenizer_without_torch", None)
        if converted is None:
            return self.source.write_tokenizer(root, check)
        return export_tokenizer(converted(), root, check)

    def describe(self) -> dict[str, Any]:
        return self.source.describe()


class SizedWeightWriter(WeightFileWriter):
    """Lists tensors at the offsets `WeightFileWriter` would write them to, writing nothing:
    the file ends as a sparse file of the same length."""

    def _align(self) -> int:
        offset = self._fh.tell()
        return self._fh.seek(offset + (-offset) % fmt.TENSOR_ALIGNMENT)

    def add(
        self,
        name: str,
        array: np.ndarray,
        dtype: str | None = None,
        shape: tuple[int, ...] | None = None,
    ) -> TensorEntry:
        shape = tuple(int(s) for s in (shape or array.shape))
        return self._sized(name, dtype or str(array.dtype), shape, array.nbytes)

    def add_chunks(self, name: str, dtype: str, shape: tuple[int, ...], chunks: Any) -> TensorEntry:
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize  # the chunks are never read
        return self._sized(name, dtype, tuple(shape), nbytes)

    def _sized(self, name: str, dtype: str, shape: tuple[int, ...], nbytes: int) -> TensorEntry:
        offset = self._align()
        self._fh.seek(offset + nbytes)
        return TensorEntry(name, dtype, shape, self.relative, offset, nbytes)

    def close(self) -> None:
        self._fh.truncate()
        super().close()


def write_layout(
    source_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    config: ExportConfig,
    progress: bool = False,
) -> Path:
    """Write into the empty folder `root` the package `export(source_path, ..., config)` would
    write, with sized weight files instead of weights (see the module docstring). Seconds,
    most of them reading a GGUF's header and converting its tokenizer (17 s for a
    151,936-token vocabulary here), shown as a bar with `progress`."""
    if config.quant in STATIC:
        raise ValueError("a static (NPU) package is calibrated on the model: export it")
    root = Path(root)
    with tqdm(desc=f"lay out {Path(source_path).name}", unit="step", disable=not progress) as bar:
        source = ShapeSource(open_source(source_path))
        arch = get_architecture(source.architecture)
        spec = arch.spec(source.config())
        bar.total = spec.num_layers + 4  # the header, the tokenizer, embed, blocks, head
        bar.update()
        tokenizer = source.write_tokenizer(root, check=False)
        if tokenizer.chat_template is None and arch.declaration.chat_template is not None:
            tokenizer = replace(tokenizer, chat_template=arch.declaration.chat_template)
        bar.update()
        laid_out = replace(config, method="rtn")  # AWQ changes values, not the layout
        parts, quantization = write_weight_parts(
            source, arch, spec, root, laid_out, tokenizer, bar, SizedWeightWriter
        )
    files = tuple(
        fmt.FileEntry(f.name, f.stat().st_size, UNWRITTEN_SHA256)
        if f.suffix == ".bin"
        else fmt.describe_file(root, f.name)
        for f in sorted(root.iterdir())
    )
    manifest = Manifest(
        spec=spec,
        parts=tuple(parts),
        tokenizer=tokenizer,
        files=files,
        exporter={"source": source.describe(), "layout_only": True},
        quantization=None if quantization is None else {**quantization, "method": config.method},
    )
    fmt.write_manifest(root, manifest)
    return root
