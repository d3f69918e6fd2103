"""Static int8 QDQ packages for NPUs: fixed shapes, calibrated activation ranges.

NPU execution providers (QNN, OpenVINO NPU, CoreML) compile a graph ahead of time: every
shape must be fixed and every tensor's quantization known. So each part gets one graph per
step length in `static_chunks` (1 for decode, larger ones for chunked prefill), batch 1 and a
fixed KV-cache length; matmul inputs go through QuantizeLinear/DequantizeLinear with ranges
measured on real text, and weights are int8 per output channel behind DequantizeLinear.
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
from exporters.awq_export import calibration_ids, embed_rows
from exporters.calibration import block_forward, rms_norm
from exporters.linear import RowInt8, RowWeight, int8_per_channel, write_qdq_linear
from exporters.sources import Source
from quant.awq import smooth_scale

ROWS_PER_CHUNK = 8192


def activation_range(x: np.ndarray) -> tuple[float, float]:
    """The full observed range. Clipping even the top 0.001% of values (measured: perplexity
    14.4 -> 47 on SmolLM2) destroys the model: the rare huge activations carry meaning."""
    return float(x.min()), float(x.max())


def _row_int8(
    out: WeightFileWriter, source: Source, name: str, spec: ModelSpec, record: dict[str, Any]
) -> RowInt8:
    rows = [
        slice(a, min(a + ROWS_PER_CHUNK, spec.vocab_size))
        for a in range(0, spec.vocab_size, ROWS_PER_CHUNK)
    ]
    parts = [int8_per_channel(source.read(name, r), axis=0) for r in rows]
    record[name] = {"bits": 8, "per_row": True, "from": "quantized"}
    return RowInt8(
        out.add(f"{name}.int8", np.concatenate([q for q, _ in parts])),
        out.add(f"{name}.scale", np.concatenate([s for _, s in parts])),
    )


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
        with WeightFileWriter(self.root, "embed.bin") as out:
            table = _row_int8(out, source, "token_embd.weight", spec, self.record)
        parts = [
            self._save("embed", "embed", lambda d: arch.embed_graph(spec, table, d), table.entries)
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
                table
                if head == "token_embd.weight"
                else _row_int8(out, source, head, spec, self.record)
            )
        output = RowInt8(output.weight, output.scale, activation_range(final), self.activation_bits)
        parts.append(
            self._save(
                "head",
                "head",
                lambda d: arch.head_graph(spec, norm, output, d),
                [norm, *output.entries],
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
                n: write_qdq_linear(
                    out,
                    n,
                    w,
                    activation_range(inputs[n.split(".")[2]]),
                    self.activation_bits,
                    self.record,
                )
                for n, w in rows.items()
            }
        tensors = [*stored.values(), *(e for lin in linears.values() for e in lin.entries)]
        part = self._save(
            f"block.{i}",
            "block",
            lambda d: arch.block_graph(spec, i, stored, linears, d),
            tensors,
            block_index=i,
        )
        return part, hidden
