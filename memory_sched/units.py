"""Streaming units: whole blocks, or TPI-LLM's half-blocks (attention and MLP), and the head
in slices of its output rows.

The window policy treats units as opaque names, so halves are just more names: `block.3.attn`
and `block.3.mlp`, each a `PartEntry` holding the tensors of its half (its norm included).
Halves halve the smallest window (the buffer is the largest unit), at the cost of twice as
many reads; which half a tensor belongs to is read from its name (`blk.3.attn_qkv.weight`,
`blk.3.ffn_down.weight.q4`), the GGUF-style names every edge exporter writes. The head's
output matrix (the vocabulary's rows: 108 MiB of SmolLM2's float32 package, more than seven
of its blocks) streams as `head.0`, `head.1`, ... when a budget cannot keep it resident.

>>> units = stream_units(manifest.parts, split_blocks=True)
>>> [u.name for u in units][:3]
['embed', 'block.0.attn', 'block.0.mlp']
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace

from edge.errors import PackageError
from edge.format import PartEntry, TensorEntry

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


def head_row_ranges(vocab_size: int, slices: int) -> list[tuple[int, int]]:
    """The output rows [start, end) of each of `slices` head slices (as even as whole rows
    allow, every one non-empty), in order: exactly `slices` of them, so the ranges follow
    from the count of slices alone."""
    k = max(1, min(slices, vocab_size))
    return [(j * vocab_size // k, (j + 1) * vocab_size // k) for j in range(k)]


def split_head(part: PartEntry, vocab_size: int, slices: int) -> tuple[PartEntry, ...]:
    """The head as units of its output rows (`head.0`, `head.1`, ...; `head_row_ranges`).

    Each holds its rows of every tensor stored by output row: the exporter's layouts all are
    (a float [V, H] table, `MatMulNBits`' [V, blocks, bytes] with its scales and zero points),
    so a slice is one contiguous range of each. The final norm (a few KB) goes with every
    slice. A head stored by columns (a float [H, V] MatMul, int8 rows [H, V]) raises
    `PackageError`: it can only be pinned."""
    if part.kind != "head":
        raise PackageError(f"only the head streams in slices; {part.name!r} is a {part.kind}")
    return tuple(
        replace(
            part,
            name=f"{part.name}.{j}",
            tensors=tuple(_rows(part, t, vocab_size, a, b) for t in part.tensors),
        )
        for j, (a, b) in enumerate(head_row_ranges(vocab_size, slices))
    )


def _rows(part: PartEntry, tensor: TensorEntry, vocab_size: int, a: int, b: int) -> TensorEntry:
    shape = tensor.shape
    if len(shape) == 1 and shape[0] % vocab_size:  # the norm
        return tensor
    by_rows = (
        bool(shape) and shape[0] % vocab_size == 0 and (len(shape) == 1 or shape[0] == vocab_size)
    )
    if not by_rows or tensor.nbytes % vocab_size:
        raise PackageError(
            f"part {part.name!r}: {tensor.name} {list(shape)} is not stored by output rows, "
            "so the head cannot stream in slices"
        )
    row = tensor.nbytes // vocab_size
    per_row = shape[0] // vocab_size
    return replace(
        tensor,
        shape=((b - a) * per_row, *shape[1:]),
        offset=tensor.offset + a * row,
        nbytes=(b - a) * row,
    )
