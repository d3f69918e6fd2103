"""Runs one device's tensor-parallel share of blocks [first, last) (`edge.cluster.shards`):
the partial attention and FFN outputs whose sums over the devices are the blocks' outputs.

The coordinator runs its own share with it in-process and every worker runs one behind its
link, so the same code computes every partial. Each device caches keys and values of only the
KV heads its query heads read. The math is the numpy forward's (devices/spec_forward), op for
op; block-quantized matmuls go through the JIT kernels that read the packed slices in place.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields, replace

import numpy as np

from devices.spec_forward.numpy_forward import (
    ACTIVATIONS,
    apply_rope,
    attention,
    layer_rope,
    rms_norm,
)
from devices.spec_forward.weights import BlockWeights, LinearWeight, NBitsWeight
from edge.architectures import attention_scale, is_sliding
from edge.cluster.shards import ShardBlock, Share, shard_block
from edge.errors import ConfigError, ContextOverflowError
from edge.format import ModelSpec
from edge.package import Package
from edge.planner.memory import DEFAULT_FOOTPRINT, Breakdown, activation_bytes, kv_resident
from edge.rope import rope_tables
from edge.streaming.kernels import StreamedLinear

PHASES = ("attention", "ffn")
DEFAULT_MAX_CONTEXT = 4096


@dataclass(frozen=True)
class ShareSize:
    """What a share holds, known before it loads (`share_size`) or once loaded
    (`ShardRunner.size`): the memory model of `share_breakdown`."""

    weights: int  # its copied slices of every block (and their norms)
    blocks: int
    kv_heads: int  # KV heads it caches per block
    block_bytes: int  # the largest block's weights: its maps, touched while its slices copy
    quantized: bool  # block-quantized matmuls: the JIT compiles kernels at the first step


def share_breakdown(
    spec: ModelSpec, size: ShareSize, tokens: int, chunk: int, jit: int
) -> Breakdown:
    """Predicted memory of a share beyond its process (in a worker, which imported numpy and
    llvmlite before it measured its idle RSS): the slices, the KV pages `tokens` positions
    touch, numpy's temporaries for a `chunk`-token step, and while loading one block's maps
    (`block_weights` reads each block through maps of its own, released once sliced: fancy
    indexing a float matrix's columns reads every row). Block-quantized shares compile their
    kernels at the first step, after loading (`jit` bytes of LLVM code pages)."""
    runtime = jit if size.quantized else 0
    return Breakdown(
        weights=size.weights,
        runtime=runtime,
        kv_cache=kv_resident(spec, size.blocks, tokens, size.kv_heads),
        activations=activation_bytes(spec, chunk),
        transient=size.block_bytes,
        load_relief=runtime,
    )


def share_size(package: Package, share: Share, first: int, end: int) -> ShareSize:
    """The size of `share` of blocks [first, end) before loading it: the first block sliced for
    real (so every layout rule of `shard_block` counts), the others scaled by their bytes."""
    spec = package.manifest.spec
    parts = [
        p
        for p in package.manifest.parts
        if p.kind == "block" and first <= (p.block_index or 0) < end
    ]
    totals = [sum(t.nbytes for t in p.tensors) for p in parts]
    sliced = owned(shard_block(spec, next(block_weights(package, first, first + 1)), share))
    held = _held_bytes(sliced)
    return ShareSize(
        weights=sum(round(held * total / totals[0]) for total in totals),
        blocks=len(parts),
        kv_heads=sliced.kv[1] - sliced.kv[0],
        block_bytes=max(totals),
        quantized=_quantized(sliced),
    )


class ShardRunner:
    """Share `share` of blocks `blocks` (their typed weights, e.g. memory maps of the package:
    only the share's slices are copied and kept)."""

    def __init__(
        self,
        spec: ModelSpec,
        blocks: Iterable[BlockWeights],
        share: Share,
        max_context: int,
        threads: int | None = None,
    ) -> None:
        if max_context < 1:
            raise ConfigError(f"max_context={max_context}; must be >= 1")
        self.spec, self.share, self.max_context = spec, share, max_context
        self.kv = share.kv_heads(spec)
        self.blocks: dict[int, ShardBlock] = {}
        self.reductions: dict[int, Reduction] = {}
        self.block_bytes = 0  # the largest block's weights (its maps while it was sliced)
        for block in blocks:  # one at a time: a block's maps may go once it is sliced
            self.blocks[block.index] = owned(shard_block(spec, block, share))
            self.reductions[block.index] = Reduction.of(block)
            self.block_bytes = max(self.block_bytes, _array_bytes(block))
        self.reached = 0  # the furthest position cached: the KV pages touched
        shape = (self.kv[1] - self.kv[0], max_context, spec.head_dim)
        self.keys = {i: np.zeros(shape, np.float32) for i in self.blocks}
        self.values = {i: np.zeros(shape, np.float32) for i in self.blocks}
        self.filled = dict.fromkeys(self.blocks, 0)  # tokens cached per block
        self.rope = rope_tables(spec, max_context)
        self.linear = StreamedLinear(threads)

    @property
    def nbytes(self) -> int:
        """Weights held plus the KV cache."""
        weights = sum(b.nbytes for b in self.blocks.values())
        return weights + 2 * sum(k.nbytes for k in self.keys.values())

    @property
    def size(self) -> ShareSize:
        return ShareSize(
            weights=sum(_held_bytes(b) for b in self.blocks.values()),
            blocks=len(self.blocks),
            kv_heads=self.kv[1] - self.kv[0],
            block_bytes=self.block_bytes,
            quantized=any(_quantized(b) for b in self.blocks.values()),
        )

    @property
    def predicted_growth(self) -> int:
        """What holding and running this share adds to its process's peak RSS, at the
        context it has reached (the JIT's code pages as the planner's constant)."""
        chunk = min(self.max_context, 256)
        return share_breakdown(
            self.spec, self.size, self.reached, chunk, DEFAULT_FOOTPRINT.jit
        ).peak

    def _matmul(self, x: np.ndarray, weight: LinearWeight) -> np.ndarray:
        out = self.linear(x, weight)
        return out if weight.bias is None else out + weight.bias

    def partial(self, phase: str, layer: int, x: np.ndarray, position: int) -> np.ndarray:
        """This share's partial output of `phase` of block `layer` for hidden states `x`
        [S, H] (the block's input for "attention", its residual after attention for "ffn"):
        float32 [S, H]. Attention writes the step's keys and values at [position, + S),
        forgetting what the cache held from `position` on."""
        block = self.blocks.get(layer) if isinstance(layer, int) else None
        if block is None:
            raise ConfigError(f"block {layer!r:.20} is not in this share")
        if phase not in PHASES:
            raise ConfigError(f"phase {phase!r:.20}; one of {PHASES}")
        spec = self.spec
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != spec.hidden_size:
            raise ConfigError(f"hidden states must be float32 [S, {spec.hidden_size}]")
        if phase == "ffn":
            normed = rms_norm(x, block.ffn_norm, spec.rms_norm_eps)
            gate, up = np.split(self._matmul(normed, block.gate_up), 2, axis=-1)
            return self._matmul(ACTIVATIONS[spec.activation](gate) * up, block.down)
        return self._attention(block, x, position)

    def _attention(self, block: ShardBlock, x: np.ndarray, position: int) -> np.ndarray:
        spec, layer = self.spec, block.index
        s, d = x.shape[0], spec.head_dim
        if isinstance(position, bool) or not isinstance(position, int):
            raise ConfigError(f"position must be an integer, got {position!r:.20}")
        if not 0 <= position <= self.filled[layer]:
            raise ConfigError(
                f"position {position}: block {layer} of this share caches "
                f"{self.filled[layer]} tokens (a step may rewind, not skip ahead)"
            )
        end = position + s
        if end > self.max_context:
            raise ContextOverflowError(
                f"{position} + {s} tokens exceed the context {self.max_context}"
            )
        h = block.share.heads[1] - block.share.heads[0]
        kv = block.kv[1] - block.kv[0]
        qkv = self._matmul(rms_norm(x, block.attn_norm, spec.rms_norm_eps), block.qkv)
        q = qkv[:, : h * d].reshape(s, h, d).transpose(1, 0, 2)
        k = qkv[:, h * d : (h + kv) * d].reshape(s, kv, d).transpose(1, 0, 2)
        v = qkv[:, (h + kv) * d :].reshape(s, kv, d).transpose(1, 0, 2)
        if spec.qk_norm:
            assert block.q_norm is not None and block.k_norm is not None
            q = rms_norm(q, block.q_norm, spec.rms_norm_eps)
            k = rms_norm(k, block.k_norm, spec.rms_norm_eps)
        cos, sin = (t[position:end] for t in layer_rope(spec, layer, self.rope))
        keys, values = self.keys[layer], self.values[layer]
        keys[:, position:end] = apply_rope(k, cos, sin)
        values[:, position:end] = v
        self.filled[layer] = end
        self.reached = max(self.reached, end)
        q = apply_rope(q, cos, sin)
        window = spec.sliding_window if is_sliding(spec, layer) else 0
        group = spec.num_heads // spec.num_kv_heads
        pieces = []
        for j in range(*block.kv):  # the share's query heads of each KV head it holds
            lo = max(block.share.heads[0], j * group) - block.share.heads[0]
            hi = min(block.share.heads[1], (j + 1) * group) - block.share.heads[0]
            slot = j - block.kv[0]
            pieces.append(
                attention(
                    q[lo:hi],
                    keys[slot : slot + 1, :end],
                    values[slot : slot + 1, :end],
                    position,
                    attention_scale(spec),
                    window,
                )
            )
        return self._matmul(np.concatenate(pieces, axis=1), block.attn_output)

    def reset(self) -> None:
        self.filled = dict.fromkeys(self.blocks, 0)


def _held_bytes(block: ShardBlock) -> int:
    """A share's bytes of one block: its slices and its copies of the norms."""
    norms = (block.attn_norm, block.ffn_norm, block.q_norm, block.k_norm)
    return block.nbytes + sum(n.nbytes for n in norms if n is not None)


def _quantized(block: ShardBlock) -> bool:
    weights = (block.qkv, block.attn_output, block.gate_up, block.down)
    return any(isinstance(w, NBitsWeight) for w in weights)


def _array_bytes(value: object) -> int:
    """Bytes of the arrays `value` holds (a dataclass of arrays and weights, recursively)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if not hasattr(value, "__dataclass_fields__"):
        return 0
    return sum(_array_bytes(getattr(value, f.name)) for f in fields(value))  # type: ignore[arg-type]


def owned(block: ShardBlock) -> ShardBlock:
    """`block` with no array left viewing a package map. A float matrix's rows are a
    contiguous view, which `shard_block` keeps uncopied: the share would then hold its rows as
    the file's pages, which the kernel maps around each fault in whole page-cache folios (up
    to 2x the rows, varying with how the file was read), never on huge pages, and which pin
    the whole tensor's map. A copy holds exactly the share's bytes."""
    return replace(
        block, **{k: _owned(getattr(block, k)) for k in ("qkv", "attn_output", "gate_up", "down")}
    )


def _owned(weight: LinearWeight) -> LinearWeight:
    arrays = {f.name: getattr(weight, f.name) for f in fields(weight)}
    mapped = {k: v.copy() for k, v in arrays.items() if _maps_file(v)}
    return replace(weight, **mapped) if mapped else weight


def _maps_file(value: object) -> bool:
    """Whether `value` is an array whose memory is a memory map (a package file's pages)."""
    if not isinstance(value, np.ndarray):
        return False
    base: object = value
    while isinstance(base, np.ndarray | memoryview):
        base = base.base if isinstance(base, np.ndarray) else base.obj
    return isinstance(base, mmap.mmap)


@dataclass(frozen=True, eq=False)
class Reduction:
    """What the centre of a star reduction adds to one block's summed partials: the output
    biases the shares leave out and the sandwich norms (copies: a few [H] vectors)."""

    attention_bias: np.ndarray | None
    ffn_bias: np.ndarray | None
    post_attention_norm: np.ndarray | None
    post_ffw_norm: np.ndarray | None

    @classmethod
    def of(cls, block: BlockWeights) -> Reduction:
        def copy(vector: np.ndarray | None) -> np.ndarray | None:
            return None if vector is None else np.array(vector, np.float32)

        return cls(
            copy(block.attn_output.bias),
            copy(block.down.bias),
            copy(block.post_attention_norm),
            copy(block.post_ffw_norm),
        )


def finish(
    spec: ModelSpec, reduction: Reduction, phase: str, total: np.ndarray, residual: np.ndarray
) -> np.ndarray:
    """The reduction's side of `phase`: the summed partials `total` [S, H] plus the bias the
    shares left out, through the sandwich norm where the spec has one, plus `residual`."""
    attention = phase == "attention"
    bias = reduction.attention_bias if attention else reduction.ffn_bias
    if bias is not None:
        total = total + bias
    if spec.sandwich_norms:
        norm = reduction.post_attention_norm if attention else reduction.post_ffw_norm
        assert norm is not None
        total = rms_norm(total, norm, spec.rms_norm_eps)
    return residual + total


def block_weights(package: Package, first: int, end: int) -> Iterator[BlockWeights]:
    """Blocks [first, end) of `package`, one at a time, each over memory maps of its own (not
    the package's cache): once a share has copied its slices, the block and the pages its
    slicing touched are released, so a device's memory holds its share, not the blocks."""
    from devices.spec_forward.weights import part_weights

    spec, quant = package.manifest.spec, package.manifest.quant
    for part in package.manifest.parts:
        if part.kind == "block" and first <= (part.block_index or 0) < end:
            maps = {t.name: package.files.map(t) for t in part.tensors}
            weights = part_weights(spec, part, maps, quant)
            assert isinstance(weights, BlockWeights)
            yield weights


def load_share(
    package: Package,
    share: object,
    blocks: object,
    max_context: object = None,
    threads: object = None,
) -> ShardRunner:
    """The `ShardRunner` a coordinator asked for (every argument is untrusted input): share
    `share` of blocks [blocks[0], blocks[1]) of `package`, whose files are only mapped; the
    share's slices are what this device keeps."""
    from devices.memory_info import read_memory

    spec = package.manifest.spec
    parsed = Share.from_meta(spec, share)
    if (
        not isinstance(blocks, list)
        or len(blocks) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in blocks)
        or not 0 <= blocks[0] < blocks[1] <= spec.num_layers
    ):
        raise ConfigError(f"blocks={blocks!r:.40}: not a range of the {spec.num_layers} blocks")
    for name, value in (("max_context", max_context), ("threads", threads)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise ConfigError(f"load_shard: {name} must be an integer")
        if value is not None and value < 1:
            raise ConfigError(f"load_shard: {name}={value}; must be >= 1")
    context = min(max_context or DEFAULT_MAX_CONTEXT, spec.max_position_embeddings)
    parts = [
        p
        for p in package.manifest.parts
        if p.kind == "block" and blocks[0] <= (p.block_index or 0) < blocks[1]
    ]
    fraction = max(
        (parsed.heads[1] - parsed.heads[0]) / spec.num_heads,
        (parsed.ffn[1] - parsed.ffn[0]) / spec.intermediate_size,
    )
    kv = parsed.kv_heads(spec)
    needed = int(sum(t.nbytes for p in parts for t in p.tensors) * fraction) + (
        2 * len(parts) * (kv[1] - kv[0]) * context * spec.head_dim * 4
    )
    available = read_memory().budget
    if needed > available:
        raise ConfigError(
            f"share {parsed.as_meta()} of blocks {blocks}: needs about {needed >> 20} MiB, but "
            f"this device has {available >> 20} MiB available"
        )
    runner = ShardRunner(
        spec,
        block_weights(package, blocks[0], blocks[1]),
        parsed,
        context,
        threads,  # type: ignore[arg-type]
    )
    from edge.huge_pages import collapse_resident

    collapse_resident()  # the slices are read every step: as for a resident engine
    return runner
