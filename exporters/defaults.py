"""The export a user gets without asking: the precision and quality of what they pulled.

A GGUF file tells what its publisher quantized to. Exporting a 4-bit file to float32 would
make a package 7x its size that decodes at float32 speed, so by default:

- Q4_0 weights (a lossless repack into MatMulNBits): int4, symmetric, round to nearest: the
  publisher's own bits;
- other 4-bit types (Q4_1, Q4_K, ...), which are re-quantized: int4 with AWQ, asymmetric
  (a zero point per block, like Q4_1 and the K-quants): measured on SmolLM2 (Q4_1), +10.1%
  perplexity over float32 on held-out text against +21.9% for plain rounding. Blocks of 32
  values, or 64 where the hidden size is at least 1536: ONNX Runtime's int4 kernel is
  compute-bound on a CPU's two cores and decodes Qwen2.5-Coder-1.5B 1.08-1.11x faster with
  half the block scales, for +1.2% perplexity (6.42 vs 6.34; llama.cpp's own Q4_0 of it is
  +5.3% over float32), while SmolLM2 (hidden 576) loses 5 points of perplexity to them;
- 5 bits or more (Q5, Q6_K, Q8_0) or 16/32-bit floats: int8 (+0.7% perplexity on SmolLM2, a
  quarter of float32);
- a Hugging Face folder or a PyTorch module: float32, as before (no publisher's choice to
  follow; `--quant` picks one).

Float32 from a GGUF file is one `--quant none` away.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

from edge.hashing import file_sha256
from edge.paths import cache_dir
from edge.stamps import read_stamp, write_stamp
from exporters.export import ExportConfig
from exporters.sources.gguf_source import is_gguf

# 4 bits a weight or fewer: an int4 package keeps what was pulled. Q5/Q6/Q8 and floats: int8.
FOUR_BIT_OR_FEWER = ("Q4", "Q3", "Q2", "IQ4", "IQ3", "IQ2", "IQ1", "TQ")
# Re-quantized int4 takes blocks of 64 from this hidden size up (see the module docstring).
WIDE_BLOCKS_FROM_HIDDEN = 1536


def _read(path: Path) -> tuple[Counter[str], int]:
    """(bytes of the block weights, the matrices a token reads, per GGUF tensor type; the
    hidden size: the embedding's row length), remembered by the file's
    sha256 (`edge.hashing`, itself remembered by fingerprint): parsing a GGUF's header takes
    seconds (11 s for Qwen2.5's 151,936-token vocabulary), and `edge run NAME` asks on every
    run whether its cached package is still the default export."""
    stamp = cache_dir() / "verified" / f"gguf-weights-{file_sha256(path)[:24]}.json"
    known = read_stamp(stamp)
    if (
        isinstance(known, dict)
        and isinstance(known.get("types"), dict)
        and all(isinstance(v, int) for v in known["types"].values())
        and isinstance(known.get("hidden"), int)
    ):
        return Counter(known["types"]), known["hidden"]
    types, hidden = _parse(path)
    write_stamp(stamp, {"types": dict(types), "hidden": hidden})
    return types, hidden


def _parse(path: Path) -> tuple[Counter[str], int]:
    import gguf

    reader = gguf.GGUFReader(path)
    out: Counter[str] = Counter()
    hidden = 0
    for tensor in reader.tensors:
        name = tensor.name
        if name.startswith("blk.") and name.endswith(".weight") and len(tensor.shape) == 2:
            out[tensor.tensor_type.name] += int(tensor.n_bytes)
        elif name == "token_embd.weight":
            hidden = int(tensor.shape[0])  # GGUF lists [H, V]
    return out, hidden


def default_export_config(source: str | os.PathLike[str]) -> ExportConfig:
    """What `edge run NAME`, `edge.load(path.gguf)` and `edge export` without `--quant`
    export `source` to (see the module docstring)."""
    path = Path(source)
    if not is_gguf(path):
        return ExportConfig()
    try:
        types, hidden = _read(path)
    except Exception:  # not a readable GGUF: the export itself says why, precisely
        return ExportConfig()
    if not types:
        return ExportConfig()
    main, _ = types.most_common(1)[0]
    if main == "Q4_0":
        return ExportConfig(quant="int4")
    if main.startswith(FOUR_BIT_OR_FEWER):
        block = 64 if hidden >= WIDE_BLOCKS_FROM_HIDDEN else 32
        return ExportConfig(quant="int4", method="awq", symmetric=False, block_size=block)
    return ExportConfig(quant="int8")
