"""Streaming units: whole blocks, or TPI-LLM's half-blocks (attention and MLP).

The window policy treats units as opaque names, so halves are just more names: `block.3.attn`
and `block.3.mlp`, each a `PartEntry` holding the tensors of its half (its norm included).
Halves halve the smallest window (the buffer is the largest unit), at the cost of twice as
many reads; which half a tensor belongs to is read from its name (`blk.3.attn_qkv.weight`,
`blk.3.ffn_down.weight.q4`), the GGUF-style names every edge exporter writes.

>>> units = stream_units(manifest.parts, split_blocks=True)
>>> [u.name for u in units][:3]
['embed', 'block.0.attn', 'block.0.mlp']
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from edge.errors import PackageError
from edge.format import PartEntry

HALVES = ("attn", "mlp")
# The tensor's own name after `blk.N.`: attention tensors start with `attn` (Gemma's
# `post_attention_norm` closes the attention half), MLP ones with `ffn` (GGUF), `mlp` or
# Gemma's `post_ffw_norm`.
_HALF_OF = (
    ("attn", re.compile(r"^(attn|post_attention)")),
    ("mlp", re.compile(r"^(ffn|mlp|post_ffw)")),
)


def half_name(block: str, half: str) -> str:
    """The unit name of one half of `block` ('block.3', 'attn' -> 'block.3.attn')."""
    if half not in HALVES:
        raise PackageError(f"unknown half {half!r}; halves are {HALVES}")
    return f"{block}.{half}"


def _half_of(part: PartEntry, tensor_name: str) -> str:
    local = tensor_name.split(".", 2)[-1] if tensor_name.startswith("blk.") else tensor_name
    for half, pattern in _HALF_OF:
        if pattern.match(local):
            return half
    raise PackageError(
        f"part {part.name!r}: tensor {tensor_name!r} is neither attention "
        "('attn…') nor MLP ('ffn…'/'mlp…'), so the block cannot be split in halves"
    )


def split_block(part: PartEntry) -> tuple[PartEntry, PartEntry]:
    """The attention and MLP halves of a block part, as parts named `<block>.attn/.mlp`."""
    if part.kind != "block":
        raise PackageError(f"only blocks split in halves; {part.name!r} is a {part.kind}")
    tensors: dict[str, list] = {half: [] for half in HALVES}
    for tensor in part.tensors:
        tensors[_half_of(part, tensor.name)].append(tensor)
    for half, entries in tensors.items():
        if not entries:
            raise PackageError(f"block {part.name!r} has no {half} tensors to stream")
    return tuple(  # type: ignore[return-value]
        replace(part, name=half_name(part.name, half), tensors=tuple(tensors[half]))
        for half in HALVES
    )


def stream_units(
    parts: Iterable[PartEntry], *, split_blocks: bool = False
) -> tuple[PartEntry, ...]:
    """The units of `parts` in execution order: blocks whole, or each as its two halves."""
    units: list[PartEntry] = []
    for part in parts:
        units.extend(split_block(part) if split_blocks and part.kind == "block" else (part,))
    return tuple(units)
