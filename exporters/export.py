"""GGUF file or Hugging Face folder -> edge package, one part at a time.

Memory stays at about one block's fp32 weights (plus one embedding chunk): each part is read,
written and dropped before the next. The package is assembled in a temporary sibling directory
and renamed into place only when complete, so a failed or interrupted export never leaves a
half-written package where a loader would find it.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import onnx
from tqdm.auto import tqdm

import edge
from edge import format as fmt
from edge.errors import PackageError
from edge.format import Manifest, ModelSpec, PartEntry, TensorEntry, WeightFileWriter
from exporters.arch import get_architecture
from exporters.arch.llama import LlamaArchitecture
from exporters.sources import Source, open_source
from exporters.tokenizer_export import export_tokenizer


@dataclass(frozen=True)
class ExportConfig:
    """How to export; recorded in the manifest so an export can be reproduced."""

    weight_dtype: str = "float32"
    check_tokenizer: bool = True

    def __post_init__(self) -> None:
        if self.weight_dtype != "float32":
            raise ValueError(f"weight_dtype={self.weight_dtype!r}: export writes float32; "
                             "quantize the package afterwards")


def export(source_path: str | os.PathLike[str], out_dir: str | os.PathLike[str],
           config: ExportConfig | None = None, *, overwrite: bool = False,
           progress: bool = True) -> Path:
    """Export a model to an edge package directory and return its path.

    >>> export("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-pkg")  # doctest: +SKIP
    PosixPath('smollm2-pkg')
    """
    config = config or ExportConfig()
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise PackageError(f"{out_dir} exists and is not a directory; choose another output")
    if out_dir.exists() and not overwrite and any(out_dir.iterdir()):
        raise PackageError(f"{out_dir} exists and is not empty; pass overwrite=True "
                           "(--force) to replace it")
    source = open_source(source_path)
    arch = get_architecture(source.architecture)
    spec = arch.spec(source.config())
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        _write_package(source, arch, spec, staging, config, progress)
        _replace_dir(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _write_package(source: Source, arch: LlamaArchitecture, spec: ModelSpec, root: Path,
                   config: ExportConfig, progress: bool) -> None:
    started = time.perf_counter()
    reference = source.reference_tokenizer()
    tokenizer = export_tokenizer(reference, root) if config.check_tokenizer else None
    if tokenizer is None:
        from exporters.tokenizer_export import TOKENIZER_FILE, tokenizer_info

        reference.backend_tokenizer.save(str(root / TOKENIZER_FILE))
        tokenizer = tokenizer_info(reference)

    bar = tqdm(total=spec.num_layers + 2, desc=f"export {source.path.name}", unit="part",
               disable=not progress)
    with WeightFileWriter(root, "embed.bin") as out:
        embed = arch.write_embed(source, spec, out)
    parts = [_save_part(root, "embed", "embed", arch.embed_graph(spec, embed), [embed])]
    bar.update()
    for i in range(spec.num_layers):
        with WeightFileWriter(root, f"block.{i:03d}.bin") as out:
            entries = {name: out.add(name, array)
                       for name, array in arch.block_weights(source, spec, i).items()}
        parts.append(_save_part(root, f"block.{i}", "block", arch.block_graph(spec, i, entries),
                                list(entries.values()), block_index=i))
        bar.update()
    with WeightFileWriter(root, "head.bin") as out:
        head = arch.write_head(source, spec, out, embed)
    parts.append(_save_part(root, "head", "head", arch.head_graph(spec, head),
                            list(head.values())))
    bar.update()
    bar.close()

    files = sorted({f.name for f in root.iterdir()})
    manifest = Manifest(
        spec=spec, parts=tuple(parts), tokenizer=tokenizer,
        files=tuple(fmt.describe_file(root, name) for name in files),
        exporter={"edge_version": edge.__version__, "source": source.describe(),
                  "config": asdict(config),
                  "seconds": round(time.perf_counter() - started, 2)},
    )
    fmt.write_manifest(root, manifest)


def _save_part(root: Path, name: str, kind: str, model: onnx.ModelProto,
               tensors: list[TensorEntry], block_index: int | None = None) -> PartEntry:
    graph_file = f"{name}.onnx"
    onnx.save_model(model, str(root / graph_file))
    return PartEntry(
        name=name, kind=kind, graph=graph_file, tensors=tuple(tensors),
        inputs=tuple(i.name for i in model.graph.input),
        outputs=tuple(o.name for o in model.graph.output),
        block_index=block_index,
    )


def _replace_dir(staging: Path, target: Path) -> None:
    """Move the finished package into place; an old package survives until the new one is there."""
    if not target.exists():
        staging.rename(target)
        return
    backup = target.parent / f".{target.name}.old-{os.getpid()}"
    target.rename(backup)
    try:
        staging.rename(target)
    except BaseException:
        backup.rename(target)
        raise
    shutil.rmtree(backup, ignore_errors=True)
