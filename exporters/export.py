"""GGUF file or Hugging Face folder -> edge package, one part at a time.

Memory stays at about one block's fp32 weights (plus one embedding chunk): each part is read,
written and dropped before the next. The package is assembled in a temporary sibling directory
and renamed into place only when complete, so a failed or interrupted export never leaves a
half-written package where a loader would find it.
An export never deletes what it did not create (see `exporters.output_dir`).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import onnx
from tqdm.auto import tqdm

import edge
from edge import format as fmt
from edge.errors import PackageError
from edge.format import Manifest, ModelSpec, PartEntry, TensorEntry, WeightFileWriter
from edge.graph_trust import check_graphs
from edge.hashing import source_sha256
from edge.manifest_checks import check_manifest
from edge.quant_record import STATIC_OPS
from exporters.arch import get_architecture
from exporters.arch.llama import LlamaArchitecture
from exporters.awq_export import AWQCalibrator, calibration_ids, embed_rows
from exporters.linear import (
    FloatLinear,
    Int8RowLinear,
    Linear,
    QuantLinear,
    int8_per_channel,
    quantized,
    write_int8_row_linear,
    write_linear,
    write_quantized,
)
from exporters.output_dir import (
    check_target,
    claim,
    holds,
    output_error,
    remove_stale,
    replace_dir,
    rmdir_if_empty,
    temp_dir,
)
from exporters.qdq_export import FLOAT_BITS, StaticInt8Writer
from exporters.sources import Source, open_source
from quant import TokenInt8Config, WeightQuantConfig
from quant.rows import concat_rows
from quant.schemes import SCHEME_NAMES, QuantScheme, make_scheme

METHODS = ("rtn", "awq")
STATIC_INT8 = "q-static-int8"
# The standard-op static graphs with float32 weights and activations, no Q/DQ: for NPUs that
# compute in float and have no QuantizeLinear/DequantizeLinear (CoreML's Neural Engine).
STATIC_FP32 = "static-fp32"
STATIC = (STATIC_INT8, STATIC_FP32)
ROWS_PER_CHUNK = 8192  # embedding rows read (and quantized) at a time: bounds export memory


@dataclass(frozen=True)
class ExportConfig:
    """How to export; recorded in the manifest so an export can be reproduced.

    `quant`: None keeps float32 weights; otherwise one of `quant.schemes.SCHEME_NAMES`.
    `method`: "rtn" (round to nearest) or "awq" (activation-aware scaling, calibrated on
    `calibration_tokens` tokens of real text, applied to the int4 layers it re-quantizes).
    """

    quant: str | None = None
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    method: str = "rtn"
    calibration_tokens: int = 512
    static_chunks: tuple[int, ...] = (1, 64)
    static_context: int = 1024
    static_activation_bits: int = 16
    # q-static-int8's op set: "contrib" (ONNX Runtime's GroupQueryAttention and norms) or
    # "standard" (standard ONNX ops only, what NPU providers take: exporters/arch/standard_ops.py)
    static_ops: str = "contrib"
    # The standard-op blocks' attention products (queries, keys, values, probabilities): None
    # quantizes them at static_activation_bits; 16 with 8-bit activations is the mixed
    # precision Qualcomm runs LLMs at on its HTP (linear layers A8, attention A16)
    static_attention_bits: int | None = None
    prefill_int8: bool = False
    check_tokenizer: bool = True
    # A head the source ships at more bits than the scheme's (a Q8_0 head beside 4-bit blocks)
    # is kept as shipped unless this is set; then it is quantized to the scheme too. Measured on
    # Qwen2.5-Coder-0.5B int4: decode 1.26x faster, perplexity +1.2%.
    requantize_head: bool = False

    def __post_init__(self) -> None:
        if self.quant is not None and self.quant not in (*SCHEME_NAMES, *STATIC):
            raise ValueError(
                f"quant={self.quant!r}; choose one of "
                f"{[*SCHEME_NAMES, *STATIC]} (or None for float32)"
            )
        if self.quant == STATIC_FP32 and self.static_ops != "standard":
            raise ValueError(
                f"quant={STATIC_FP32!r} has standard-op graphs only; "
                f"static_ops={self.static_ops!r} must be 'standard'"
            )
        if self.static_ops not in STATIC_OPS:
            raise ValueError(f"static_ops={self.static_ops!r}; choose one of {list(STATIC_OPS)}")
        if self.static_activation_bits not in (8, 16):
            raise ValueError(f"static_activation_bits={self.static_activation_bits}; 8 or 16")
        if self.static_attention_bits is not None:
            if self.static_attention_bits not in (8, 16):
                raise ValueError(f"static_attention_bits={self.static_attention_bits}; 8 or 16")
            if self.quant != STATIC_INT8 or self.static_ops != "standard":
                raise ValueError(
                    "static_attention_bits sets the bits of the standard-op graphs' quantized "
                    f"attention: it needs quant={STATIC_INT8!r} and static_ops='standard' "
                    f"(not quant={self.quant!r}, static_ops={self.static_ops!r})"
                )
        if 1 not in self.static_chunks or max(self.static_chunks) > self.static_context:
            raise ValueError(
                f"static_chunks={self.static_chunks} must include 1 (decode) "
                f"and fit static_context={self.static_context}"
            )
        make_scheme(
            "int4", 1, block_size=self.block_size, accuracy_level=self.accuracy_level
        )  # validates both values
        if self.method not in METHODS:
            raise ValueError(f"method={self.method!r}; choose one of {list(METHODS)}")
        if self.quant == "w8a8" and self.method != "rtn":
            raise ValueError(
                f"method={self.method!r} scales 4-bit layers; w8a8 has none (use method='rtn')"
            )
        if self.quant == "w8a8" and self.prefill_int8:
            raise ValueError(
                "prefill_int8 adds int8-row prefill graphs; a w8a8 package's "
                "own graphs already are (drop prefill_int8)"
            )
        if self.calibration_tokens < 16:
            raise ValueError(f"calibration_tokens={self.calibration_tokens}; need >= 16")

    def scheme(self, spec: ModelSpec) -> QuantScheme | None:
        return (
            None
            if self.quant in (None, *STATIC)
            else make_scheme(
                self.quant,
                spec.num_layers,
                block_size=self.block_size,
                accuracy_level=self.accuracy_level,
                symmetric=self.symmetric,
            )
        )


def export(
    source_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: ExportConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Export a model to an edge package directory and return its path.

    `out_dir` must be missing or empty, or, with `overwrite`, an edge package (manifest.json and
    only the files it lists), which stays in place until the new package is complete. The
    folder holding the source is never a valid output. Refusals raise `PackageError`; a folder
    that cannot be written (read-only, full, under a file) raises `OutputError`.

    >>> export("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-pkg")  # doctest: +SKIP
    PosixPath('smollm2-pkg')
    """
    config = config or ExportConfig()
    out_dir = Path(out_dir)
    target = Path(os.path.abspath(out_dir))  # "." or "pkg/.." name a folder with a parent
    try:
        remove_stale(target.parent)
        check_target(Path(source_path), target, overwrite)
        source = open_source(source_path)
        arch = get_architecture(source.architecture)
        spec = arch.spec(source.config())
        digest = source_sha256(source.path)
        _export_into(source, arch, spec, target, config, overwrite, progress, digest)
    except OSError as exc:
        error = output_error(exc, target)
        if error is None:
            raise
        raise error from exc
    return out_dir


def _export_into(
    source: Source,
    arch: LlamaArchitecture,
    spec: ModelSpec,
    out_dir: Path,
    config: ExportConfig,
    overwrite: bool,
    progress: bool,
    digest: str,
) -> None:
    """Claim `out_dir`, write the package beside it, move it in; on any failure remove only
    what this call created."""
    created: list[Path] = []
    staging: Path | None = None
    try:
        claim(source.path, out_dir, overwrite, created)
        staging = temp_dir(out_dir, "partial")
        _write_package(source, arch, spec, staging, config, progress, digest)
        replace_dir(staging, out_dir, overwrite)
    except BaseException:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for path in created:
            rmdir_if_empty(path)
        raise


def quantize_package(
    package: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    config: ExportConfig,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Quantize a float32 edge package into a new package; the source is only read.

    The output follows `export`'s rules; it can be neither the source package nor a folder
    holding it.

    >>> quantize_package("smol-pkg", "smol-int4", ExportConfig(quant="int4"))  # doctest: +SKIP
    """
    if config.quant is None:
        raise ValueError("quantize_package needs ExportConfig.quant (int8, int4, int4-mixed)")
    if not (Path(package) / fmt.MANIFEST_FILE).is_file():
        raise PackageError(f"{package} is not an edge package (no {fmt.MANIFEST_FILE})")
    if holds(Path(out_dir), Path(package)):
        raise PackageError(
            "the output must differ from the source package (and not hold it); "
            "choose another output"
        )
    return export(package, out_dir, config, overwrite=overwrite, progress=progress)


def _write_package(
    source: Source,
    arch: LlamaArchitecture,
    spec: ModelSpec,
    root: Path,
    config: ExportConfig,
    progress: bool,
    source_digest: str,
) -> None:
    started = time.perf_counter()
    tokenizer = source.write_tokenizer(root, check=config.check_tokenizer)
    if tokenizer.chat_template is None and arch.declaration.chat_template is not None:
        tokenizer = replace(tokenizer, chat_template=arch.declaration.chat_template)
    with tqdm(
        total=spec.num_layers + 2,
        desc=f"export {source.path.name}",
        unit="part",
        disable=not progress,
    ) as bar:
        if config.quant in STATIC:
            parts, quantization = _write_static_int8(
                source, arch, spec, root, config, tokenizer, bar
            )
        else:
            parts, quantization = write_weight_parts(
                source, arch, spec, root, config, tokenizer, bar
            )
    _finish(root, spec, parts, tokenizer, source, config, quantization, started, source_digest)


def _write_static_int8(
    source: Source,
    arch: LlamaArchitecture,
    spec: ModelSpec,
    root: Path,
    config: ExportConfig,
    tokenizer: fmt.TokenizerInfo,
    bar: tqdm,
) -> tuple[list[PartEntry], dict]:
    writer = StaticInt8Writer(
        source,
        arch,
        spec,
        root,
        tuple(sorted(config.static_chunks)),
        config.static_context,
        FLOAT_BITS if config.quant == STATIC_FP32 else config.static_activation_bits,
        config.static_ops,
        config.static_attention_bits,
    )
    parts = writer.write(tokenizer, config.calibration_tokens, bar)
    return parts, {
        "scheme": {"name": config.quant},
        "method": "static-minmax" if config.quant == STATIC_INT8 else "none",
        "static": {
            "chunks": sorted(config.static_chunks),
            "batch": 1,
            "max_context": config.static_context,
            "activation_bits": writer.activation_bits,
            "weight_bits": 8 if config.quant == STATIC_INT8 else FLOAT_BITS,
            # absent: "contrib", as packages written before the standard-op variant read
            **({"ops": config.static_ops} if config.static_ops != "contrib" else {}),
            # the standard-op int8 blocks' attention products (contrib ones compute it in float)
            **(
                {"attention_bits": writer.attention_bits}
                if writer.standard is not None and writer.activation_bits != FLOAT_BITS
                else {}
            ),
        },
        "tensors": writer.record,
    }


def write_weight_parts(
    source: Source,
    arch: LlamaArchitecture,
    spec: ModelSpec,
    root: Path,
    config: ExportConfig,
    tokenizer: fmt.TokenizerInfo,
    bar: tqdm,
    writer: type[WeightFileWriter] = WeightFileWriter,
) -> tuple[list[PartEntry], dict | None]:
    """float32 or weight-only int4/int8: embed, each block, head, one part at a time, their
    weights stored through `writer` (`exporters.layout` passes one that only sizes them)."""
    scheme = config.scheme(spec)
    record: dict[str, dict] = {}  # per-tensor: how it was stored (manifest "quantization")
    with writer(root, "embed.bin") as out:
        embed = _write_matrix(
            out, source, "token_embd.weight", spec, scheme.embed if scheme else None, record
        )
    embed_view = embed if isinstance(embed, TensorEntry) else embed.gather_view("token_embd")
    parts = [
        _save_part(root, "embed", "embed", arch.embed_graph(spec, embed_view), _entries(embed_view))
    ]
    bar.update()
    calibrator = None
    if scheme is not None and config.method == "awq":
        ids = calibration_ids(root, tokenizer, config.calibration_tokens)
        calibrator = AWQCalibrator(spec, scheme, embed_rows(source, ids, spec.vocab_size))
    for i in range(spec.num_layers):
        parts.append(
            _write_block(source, arch, spec, root, i, scheme, config, calibrator, record, writer)
        )
        bar.update()
    head_name = arch.head_tensor(source)
    with writer(root, "head.bin") as out:
        norm = out.add("output_norm.weight", source.read("output_norm.weight"))
        head_config = scheme.head if scheme else None
        tied = head_name == "token_embd.weight" and (scheme is None or scheme.embed == head_config)
        if isinstance(head_config, TokenInt8Config):
            output = _write_head_rows(out, source, head_name, spec, record)
        else:
            output = (
                embed
                if tied
                else _write_matrix(
                    out, source, head_name, spec, head_config, record, config.requantize_head
                )
            )
    parts.append(
        _save_part(
            root, "head", "head", arch.head_graph(spec, norm, output), [norm, *_entries(output)]
        )
    )
    bar.update()
    return parts, None if scheme is None else {
        "scheme": scheme.to_dict(),
        "method": config.method,
        "tensors": record,
        "prefill": "int8 per channel x int8 per token (MatMulInteger)"
        if config.prefill_int8
        else None,
    }


def _write_block(
    source: Source,
    arch: LlamaArchitecture,
    spec: ModelSpec,
    root: Path,
    i: int,
    scheme: QuantScheme | None,
    config: ExportConfig,
    calibrator: AWQCalibrator | None,
    record: dict[str, dict],
    writer: type[WeightFileWriter],
) -> PartEntry:
    block_vectors = arch.block_vectors(source, spec, i)
    block_linears = arch.block_linears(source, spec, i)
    if calibrator is not None:
        block_linears = calibrator.block(i, block_vectors, block_linears)
    with writer(root, f"block.{i:03d}.bin") as out:
        vectors = {n: out.add(n, a) for n, a in block_vectors.items()}
        linears = {
            n: write_linear(out, n, w, scheme.for_linear(n) if scheme else None, record)
            for n, w in block_linears.items()
        }
        prefill = (
            {n: write_int8_row_linear(out, n, w) for n, w in block_linears.items()}
            if scheme is not None and config.prefill_int8
            else {}
        )
    for name in linears:
        if calibrator is not None and name in calibrator.scaled:
            record[name]["from"] += " with AWQ scaling"
    every = [*linears.values(), *prefill.values()]
    tensors = [*vectors.values(), *(e for lin in every for e in _entries(lin))]
    part = _save_part(
        root,
        f"block.{i}",
        "block",
        arch.block_graph(spec, i, vectors, linears),
        tensors,
        block_index=i,
    )
    if not prefill:
        return part
    graph = f"block.{i}.prefill.onnx"
    onnx.save_model(arch.block_graph(spec, i, vectors, prefill), str(root / graph))
    return replace(part, prefill_graph=graph)


def _finish(
    root: Path,
    spec: ModelSpec,
    parts: list[PartEntry],
    tokenizer: fmt.TokenizerInfo,
    source: Source,
    config: ExportConfig,
    quantization: dict | None,
    started: float,
    source_digest: str,
) -> None:
    """Checksum every file and write the manifest: the last step, so a package is complete
    exactly when it has a manifest. `source_digest` (`edge.hashing.source_sha256`) lets a
    cached package notice that its source changed."""
    files = sorted({f.name for f in root.iterdir()})
    manifest = Manifest(
        spec=spec,
        parts=tuple(parts),
        tokenizer=tokenizer,
        files=tuple(fmt.describe_file(root, name) for name in files),
        exporter={
            "edge_version": edge.__version__,
            "source": source.describe(),
            "source_sha256": source_digest,
            "config": asdict(config),
            "seconds": round(time.perf_counter() - started, 2),
        },
        quantization=quantization,
    )
    # What edge.load would refuse is never written: the same checks as opening a package.
    check_manifest(manifest)
    check_graphs(manifest, lambda name: (root / name).read_bytes())
    fmt.write_manifest(root, manifest)


def _entries(weight: TensorEntry | Linear) -> list[TensorEntry]:
    if isinstance(weight, TensorEntry):
        return [weight]
    return [weight.weight] if isinstance(weight, FloatLinear) else weight.entries


def _vocab_chunks(spec: ModelSpec) -> list[slice]:
    """Row ranges of an embedding-sized [V, H] matrix, processed a chunk at a time to bound
    memory."""
    return [
        slice(a, min(a + ROWS_PER_CHUNK, spec.vocab_size))
        for a in range(0, spec.vocab_size, ROWS_PER_CHUNK)
    ]


def _write_matrix(
    out: WeightFileWriter,
    source: Source,
    name: str,
    spec: ModelSpec,
    config: WeightQuantConfig | None,
    record: dict[str, dict],
    requantize: bool = False,
) -> TensorEntry | QuantLinear:
    """An embedding-sized [V, H] matrix (the embedding, or a head of its own); `requantize`:
    to `config` even where the source's blocks are more precise."""
    rows = _vocab_chunks(spec)
    if config is None:
        record[name] = {"dtype": "float32"}
        return out.add_chunks(
            name,
            "float32",
            (spec.vocab_size, spec.hidden_size),
            (source.read(name, r) for r in rows),
        )
    packed, how = zip(
        *(quantized(source.read_rows(name, r), config, keep_finer=not requantize) for r in rows)
    )
    q = concat_rows(list(packed))
    record[name] = {
        "bits": q.bits,
        "block_size": q.block_size,
        "symmetric": q.symmetric,
        "from": how[0],
    }
    return write_quantized(out, name, q, config.accuracy_level)


def _write_head_rows(
    out: WeightFileWriter, source: Source, name: str, spec: ModelSpec, record: dict[str, dict]
) -> Int8RowLinear:
    """The output matrix `name` [V, H] as int8 rows [H, V] for MatMulInteger, stored as
    `output.weight` even when the source ties it to the embedding (which keeps its own,
    gatherable copy)."""
    kinds, coded = set(), []
    for rows in _vocab_chunks(spec):
        chunk = source.read_rows(name, rows)
        kinds.add(chunk.source_type)
        coded.append(int8_per_channel(chunk.fp32(), axis=0))  # one scale per output row
    weight = np.ascontiguousarray(np.concatenate([q for q, _ in coded]).T)
    record["output.weight"] = {
        "bits": 8,
        "per_channel": True,
        "activations": "int8 per token",
        "from": f"quantized from {'+'.join(sorted(kinds))} {name}",
    }
    stored = ("output.weight" + suffix for suffix in fmt.INT8_ROWS_SUFFIXES)
    return Int8RowLinear(
        out.add(next(stored), weight), out.add(next(stored), np.concatenate([s for _, s in coded]))
    )


def _save_part(
    root: Path,
    name: str,
    kind: str,
    model: onnx.ModelProto,
    tensors: list[TensorEntry],
    block_index: int | None = None,
) -> PartEntry:
    graph_file = f"{name}.onnx"
    onnx.save_model(model, str(root / graph_file))
    return PartEntry(
        name=name,
        kind=kind,
        graph=graph_file,
        tensors=tuple(tensors),
        inputs=tuple(i.name for i in model.graph.input),
        outputs=tuple(o.name for o in model.graph.output),
        block_index=block_index,
    )
