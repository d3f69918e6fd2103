"""A tiny random Llama written as a GGUF file: SmolLM2's tokenizer cut to its first 512
tokens, 2 blocks of hidden 64. A command on it takes a second or less, and an export reads a
real GGUF without SmolLM2's 49,152-token vocabulary (seconds to parse)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np

VOCAB = 512
HIDDEN, FFN, HEADS, KV_HEADS, BLOCKS = 64, 128, 4, 2, 2


def write_tiny_gguf(
    tokenizer_json: Path,
    target: Path,
    types: Mapping[str, str] | None = None,
    *,
    hidden: int = HIDDEN,
    ffn: int = FFN,
    heads: int = HEADS,
    kv_heads: int = KV_HEADS,
) -> Path:
    """A llama GGUF with random weights and the first VOCAB tokens of a byte-level BPE
    tokenizer.json (ids follow the merge order, so the merges producing them all stay).
    `types`: GGML type names by tensor name suffix (e.g. {"attn_v.weight": "Q8_0"}) for the
    weights not to store in float32. `hidden`, `ffn`, `heads`, `kv_heads`: other block sizes
    (SmolLM2's 576, 1536, 9, 3 make blocks a planner prices like real ones)."""
    import gguf

    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    ids: dict[str, int] = data["model"]["vocab"]
    tokens = sorted((t for t in ids if ids[t] < VOCAB), key=ids.__getitem__)
    merges = [" ".join(m) if isinstance(m, list) else m for m in data["model"]["merges"]]
    merges = [m for m in merges if ids.get(m.replace(" ", ""), VOCAB) < VOCAB]
    control = {t["id"] for t in data["added_tokens"] if t["special"]}  # <|im_end|> and such
    writer = gguf.GGUFWriter(target, "llama")
    writer.add_block_count(BLOCKS)
    writer.add_context_length(2048)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm")
    writer.add_token_list(tokens)
    writer.add_token_types([3 if i in control else 1 for i in range(len(tokens))])
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_pad_token_id(2)
    writer.add_add_bos_token(False)
    rng = np.random.default_rng(0)
    kv = kv_heads * hidden // heads
    shapes = {"token_embd.weight": (VOCAB, hidden), "output.weight": (VOCAB, hidden)}
    for b in range(BLOCKS):
        shapes |= {
            f"blk.{b}.attn_q.weight": (hidden, hidden),
            f"blk.{b}.attn_k.weight": (kv, hidden),
            f"blk.{b}.attn_v.weight": (kv, hidden),
            f"blk.{b}.attn_output.weight": (hidden, hidden),
            f"blk.{b}.ffn_gate.weight": (ffn, hidden),
            f"blk.{b}.ffn_up.weight": (ffn, hidden),
            f"blk.{b}.ffn_down.weight": (hidden, ffn),
        }
    for name, shape in shapes.items():
        values = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        kind = next((t for suffix, t in (types or {}).items() if name.endswith(suffix)), None)
        if kind is None:
            writer.add_tensor(name, values)
            continue
        qtype = gguf.GGMLQuantizationType[kind]
        writer.add_tensor(name, gguf.quants.quantize(values, qtype), raw_dtype=qtype)
    for name in (
        "output_norm",
        *(f"blk.{b}.{n}" for b in range(BLOCKS) for n in ("attn_norm", "ffn_norm")),
    ):
        writer.add_tensor(f"{name}.weight", np.ones(hidden, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
