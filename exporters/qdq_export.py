"""Static int8 QDQ packages for NPUs: fixed shapes, calibrated activation ranges.

NPU execution providers (QNN, OpenVINO NPU, CoreML) compile a graph ahead of time: every
shape must be fixed and every tensor's quantization known. So each part gets one graph per
step length in `static_chunks` (1 for decode, larger ones for chunked prefill), batch 1 and a
fixed KV-cache length; matmul inputs go through QuantizeLinear/DequantizeLinear with ranges
measured on real text, and weights are int8 per output channel behind DequantizeLinear.
`static_ops="standard"` writes blocks and head of standard ONNX ops (arch/standard_ops.py);
`static-fp32` (activation_bits `FLOAT_BITS`) writes those in float32, with no Q/DQ (CoreML).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

from edge.architectures import FEATURE_FIELDS, spec_features
from edge.errors import UnsupportedModelError
from edge.format import ModelSpec, PartEntry, TensorEntry, TokenizerInfo, WeightFileWriter
from exporters.arch.llama import GraphDims, LlamaArchitecture
from exporters.arch.standard_ops import StandardBlock, StandardOpsGraphs, attention_ranges
from exporters.awq_export import calibration_ids, embed_rows
from exporters.calibration import block_forward, rms_norm
from exporters.linear import (
    FloatLinear,
    RowInt8,
    RowWeight,
    int8_per_channel,
    write_linear,
    write_qdq_linear,
)
from exporters.sources import Source
from quant.awq import smooth_scale

ROWS_PER_CHUNK = 8192
# activation_bits of the float variant (`static-fp32`): float32 weights, no Q/DQ at all
FLOAT_BITS = 32


def activation_range(x: np.ndarray) -> tuple[float, float]:
    """The full observed range. Clipping even the top 0.001% of values (measured: perplexity
    14.4 -> 47 on SmolLM2) destroys the model: the rare huge activations carry meaning."""
    return float(x.min()), float(x.max())


def _row_chunks(spec: ModelSpec) -> list[slice]:
    """The vocabulary in ROWS_PER_CHUNK-row slices: a [V, H] matrix is read a chunk at a time."""
    return [
        slice(a, min(a + ROWS_PER_CHUNK, spec.vocab_size))
        for a in range(0, spec.vocab_size, ROWS_PER_CHUNK)
    ]


def _row_int8(
    out: WeightFileWriter, source: Source, name: str, spec: ModelSpec, record: dict[str, Any]
) -> RowInt8:
    rows = _row_chunks(spec)
    parts = [int8_per_channel(source.read(name, r), axis=0) for r in rows]
    record[name] = {"bits": 8, "per_row": True, "from": "quantized"}
    return RowInt8(
        out.add(f"{name}.int8", np.concatenate([q for q, _ in parts])),
        out.add(f"{name}.scale", np.concatenate([s for _, s in parts])),
    )


def _float_rows(
    out: WeightFileWriter, source: Source, name: str, spec: ModelSpec, record: dict[str, Any]
) -> TensorEntry:
    """A [V, H] matrix as float32 (the float variant's embedding and head)."""
    rows = _row_chunks(spec)
    record[name] = {"dtype": "float32"}
    return out.add_chunks(
        name, "float32", (spec.vocab_size, spec.hidden_size), (source.read(name, r) for r in rows)
    )


def _entries(weight: Any) -> list[TensorEntry]:
    if isinstance(weight, TensorEntry):
        return [weight]
    return [weight.weight] if isinstance(weight, FloatLinear) else list(weight.entries)


# The block features a Llama block has (ModelSpec's defaults).
_LLAMA_FEATURES = {f.name: f.default for f in fields(ModelSpec) if f.name in FEATURE_FIELDS}


class StaticInt8Writer:
    """Writes every part of a static int8 package, calibrating block by block."""

    def __init__(
        self,
        source: Source,
        arch: LlamaArchitecture,
        spec: ModelSpec,
        root: Path,
        chunks: tuple[int, ...],
        max_context: int,
        activation_bits: int,
        ops: str = "contrib",
        attention_bits: int | None = None,
    ) -> None:
        beyond = [
            name for name, value in spec_features(spec).items() if value != _LLAMA_FEATURES[name]
        ]
        if beyond:
            # Its calibration and QDQ blocks compute Llama's block; a Gemma-style one would
            # be calibrated on the wrong activations.
            raise UnsupportedModelError(
                f"q-static-int8 exports Llama-style blocks only; this {spec.architecture} model "
                f"uses {beyond}: export it with --quant int4, int8 or w8a8"
            )
        self.source, self.arch, self.spec, self.root = source, arch, spec, root
        self.chunks, self.max_context = chunks, max_context
        self.activation_bits = activation_bits
        # the standard-op attention products' bits (None: activation_bits, as linear layers)
        self.attention_bits = attention_bits or activation_bits
        # "standard": blocks and head of standard ONNX ops only (exporters/arch/standard_ops.py)
        self.standard = StandardOpsGraphs() if ops == "standard" else None
        self.record: dict[str, Any] = {}

    def _save(
        self,
        name: str,
        kind: str,
        build: Any,
        tensors: list[TensorEntry],
        block_index: int | None = None,
    ) -> PartEntry:
        import onnx

        variants = []
        for s in self.chunks:
            model = build(GraphDims(batch=1, seq=s, max_context=self.max_context))
            graph_file = f"{name}.s{s}.onnx"
            onnx.save_model(model, str(self.root / graph_file))
            variants.append((s, graph_file))
        return PartEntry(
            name=name,
            kind=kind,
            graph=variants[0][1],
            tensors=tuple(tensors),
            inputs=tuple(i.name for i in model.graph.input),
            outputs=tuple(o.name for o in model.graph.output),
            block_index=block_index,
            static_graphs=tuple(variants),
        )

    def write(self, tokenizer: TokenizerInfo, calibration_tokens: int, bar: Any) -> list:
        spec, arch, source = self.spec, self.arch, self.source
        hidden = embed_rows(
            source, calibration_ids(self.root, tokenizer, calibration_tokens), spec.vocab_size
        )
        float_weights = self.activation_bits == FLOAT_BITS
        rows = _float_rows if float_weights else _row_int8
        with WeightFileWriter(self.root, "embed.bin") as out:
            table = rows(out, source, "token_embd.weight", spec, self.record)
        parts = [
            self._save(
                "embed", "embed", lambda d: arch.embed_graph(spec, table, d), _entries(table)
            )
        ]
        bar.update()
        for i in range(spec.num_layers):
            part, hidden = self._block(i, hidden)
            parts.append(part)
            bar.update()
        head = arch.head_tensor(source)
        with WeightFileWriter(self.root, "head.bin") as out:
            norm_weight = source.read("output_norm.weight")
            norm = out.add("output_norm.weight", norm_weight)
            final = rms_norm(hidden, norm_weight, spec.rms_norm_eps)
            output = (
                table if head == "token_embd.weight" else rows(out, source, head, spec, self.record)
            )
        if isinstance(output, RowInt8):
            output = RowInt8(
                output.weight, output.scale, activation_range(final), self.activation_bits
            )
        standard = self.standard
        parts.append(
            self._save(
                "head",
                "head",
                lambda d: (
                    standard.head_graph(spec, norm, output, d)
                    if standard
                    else arch.head_graph(spec, norm, output, d)
                ),
                [norm, *_entries(output)],
            )
        )
        bar.update()
        return parts

    def _smooth(
        self,
        i: int,
        vectors: dict[str, np.ndarray],
        dense: dict[str, np.ndarray],
        inputs: dict[str, np.ndarray],
        rows: dict[str, RowWeight],
    ) -> dict:
        """SmoothQuant every matmul whose input scale can be folded into the op before it."""
        p, f = f"blk.{i}.", self.spec.intermediate_size
        s = smooth_scale(dense[p + "ffn_down.weight"], inputs["ffn_down"])
        dense[p + "ffn_down.weight"] *= s[:, None]
        dense[p + "ffn_gate_up.weight"][:, f:] /= s
        inputs["ffn_down"] = inputs["ffn_down"] / s
        for role, norm in (("attn_qkv", "attn_norm"), ("ffn_gate_up", "ffn_norm")):
            s = smooth_scale(dense[f"{p}{role}.weight"], inputs[role])
            dense[f"{p}{role}.weight"] *= s[:, None]
            vectors[f"{p}{norm}.weight"] = (vectors[f"{p}{norm}.weight"] / s).astype(np.float32)
            inputs[role] = inputs[role] / s
        return {n: RowWeight(w.source_type, values=dense[n].T) for n, w in rows.items()}

    def _block(self, i: int, hidden: np.ndarray) -> tuple[PartEntry, np.ndarray]:
        spec, arch = self.spec, self.arch
        vectors = arch.block_vectors(self.source, spec, i)
        rows = arch.block_linears(self.source, spec, i)
        dense = {n: np.ascontiguousarray(w.fp32().T) for n, w in rows.items()}
        hidden, acts = block_forward(hidden, spec, vectors, dense, i)
        attention = None
        if self.standard is not None:  # its attention products are QDQ too: their ranges
            qkv = acts.attn_qkv @ dense[f"blk.{i}.attn_qkv.weight"]
            if spec.attention_bias:
                qkv = qkv + vectors[f"blk.{i}.attn_qkv.bias"]
            attention = attention_ranges(qkv, spec)
        inputs = {
            "attn_qkv": acts.attn_qkv,
            "attn_output": acts.attn_output,
            "ffn_gate_up": acts.ffn_gate_up,
            "ffn_down": acts.ffn_down,
        }
        if self.activation_bits == 8:  # at 16 bits smoothing only hurts the int8 weights
            rows = self._smooth(i, vectors, dense, inputs, rows)
        with WeightFileWriter(self.root, f"block.{i:03d}.bin") as out:
            stored = {n: out.add(n, a) for n, a in vectors.items()}
            linears = {
                n: write_linear(out, n, w, None, self.record)
                if self.activation_bits == FLOAT_BITS
                else write_qdq_linear(
                    out,
                    n,
                    w,
                    activation_range(inputs[n.split(".")[2]]),
                    self.activation_bits,
                    self.record,
                )
                for n, w in rows.items()
            }
        tensors = [*stored.values(), *(e for lin in linears.values() for e in _entries(lin))]
        standard = self.standard

        def build(d: GraphDims) -> Any:
            if standard is None or attention is None:
                return arch.block_graph(spec, i, stored, linears, d)
            block = StandardBlock(
                spec, i, stored, linears, attention, self.activation_bits, self.attention_bits
            )
            return standard.block_graph(block, d)

        part = self._save(
            f"block.{i}",
            "block",
            build,
            tensors,
            block_index=i,
        )
        return part, hidden
