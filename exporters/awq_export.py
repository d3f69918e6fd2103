"""AWQ during export: calibrate each block on real text, scale, then quantize.

The calibration text is CPython's documentation, taken from the end of the corpus so that
the perplexity slice (its beginning) is never used to calibrate. It is led by the special
tokens the tokenizer puts before every prompt (Gemma's `<bos>`), as at run time: Gemma parks its
attention sink on whatever token comes first, so text without `<bos>` puts the sink on an
ordinary word, and every block was calibrated on activations the model never sees when it runs
(gemma-3-270m: residuals up to 9e4 on text tokens, against 1.3e4 after `<bos>`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.format import ModelSpec, TokenizerInfo
from exporters.calibration import block_forward
from exporters.linear import RowWeight, keeps_source_blocks
from exporters.sources import Source
from quant.awq import awq_scale
from quant.schemes import QuantScheme

CALIBRATION_CHARS = 30_000


def calibration_ids(root: Path, info: TokenizerInfo, n_tokens: int) -> list[int]:
    """`n_tokens` ids: the tokenizer's lead tokens (`edge.evaluate.lead_ids`), then the end of
    the corpus."""
    from edge.evaluate import default_corpus, lead_ids
    from edge.tokenizer import Tokenizer

    tokenizer = Tokenizer(root / info.file, info)
    lead = lead_ids(tokenizer)
    text = default_corpus()[-CALIBRATION_CHARS:]
    body = tokenizer.encode(text, add_special_tokens=False)
    return [*lead, *body[len(lead) - n_tokens :]]


def embed_rows(source: Source, ids: list[int], vocab: int, chunk: int = 8192) -> np.ndarray:
    """Embedding rows of `ids` [T, H], reading the (large) table a chunk at a time."""
    wanted = np.asarray(ids)
    out: np.ndarray | None = None
    for start in range(0, vocab, chunk):
        hit = np.nonzero((wanted >= start) & (wanted < start + chunk))[0]
        if len(hit) == 0:
            continue
        rows = source.read("token_embd.weight", slice(start, min(vocab, start + chunk)))
        out = np.zeros((len(ids), rows.shape[1]), np.float32) if out is None else out
        out[hit] = rows[wanted[hit] - start]
    assert out is not None
    return out


@dataclass
class AWQCalibrator:
    """Carries the calibration hidden states from block to block."""

    spec: ModelSpec
    scheme: QuantScheme
    hidden: np.ndarray  # [T, H]
    scaled: dict[str, str] = field(default_factory=dict)  # linear name -> "AWQ"

    def __post_init__(self) -> None:
        # `hidden` holds raw embedding rows (embed_rows); the embed graph scales them (Gemma)
        if self.spec.embedding_scale != 1.0:
            self.hidden = self.hidden * np.float32(self.spec.embedding_scale)

    def block(
        self, i: int, vectors: dict[str, np.ndarray], linears: dict[str, RowWeight]
    ) -> dict[str, RowWeight]:
        """Scale block i's weights (vectors are updated in place) and advance the hidden."""
        p = f"blk.{i}."
        dense = {n: np.ascontiguousarray(w.fp32().T) for n, w in linears.items()}  # [K, N]
        self.hidden, acts = block_forward(self.hidden, self.spec, vectors, dense, i)
        f = self.spec.intermediate_size
        if self._wants(p + "ffn_down.weight", linears):
            s = awq_scale(
                dense[p + "ffn_down.weight"],
                acts.ffn_down,
                self.scheme.for_linear(p + "ffn_down.weight"),
            )
            dense[p + "ffn_down.weight"] *= s[:, None]
            dense[p + "ffn_gate_up.weight"][:, f:] /= s  # up's outputs feed down's inputs
            self.scaled[p + "ffn_down.weight"] = "AWQ"
        for name, norm, x in (
            (p + "attn_qkv.weight", p + "attn_norm.weight", acts.attn_qkv),
            (p + "ffn_gate_up.weight", p + "ffn_norm.weight", acts.ffn_gate_up),
        ):
            if self._wants(name, linears):
                s = awq_scale(dense[name], x, self.scheme.for_linear(name))
                dense[name] *= s[:, None]
                vectors[norm] = (vectors[norm] / s).astype(np.float32)
                self.scaled[name] = "AWQ"
        return {
            n: (RowWeight(w.source_type, values=dense[n].T) if n in self.scaled else w)
            for n, w in linears.items()
        }

    def _wants(self, name: str, linears: dict[str, RowWeight]) -> bool:
        config = self.scheme.for_linear(name)
        return config.bits == 4 and not keeps_source_blocks(linears[name], config)
