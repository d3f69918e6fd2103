"""Tensor-parallel shares of a block (TPI-LLM's split): which heads and FFN columns a device
computes, and the slices of a block's weights that compute them.

A block splits across devices in two places, each followed by one reduction (a sum):

    attention: device d takes query heads [h0, h1) with the KV heads they read; its partial
               output is attn[:, its heads] @ W_o[its rows], and the sum over devices is the
               block's attention output (before the bias, post-norm and residual).
    FFN:       device d takes intermediate columns [f0, f1) of gate and up, and the same rows
               of W_down; the sum of the partials is the FFN output.

Shares may be uneven (by each device's speed and memory) and any device count works: where a
GQA group of query heads straddles two devices, both hold (and cache) that KV head. FFN cuts
fall on multiples of the down projection's quantization block, so a device's rows of W_down
are whole blocks; a head cut that splits a block of W_o (block size larger than the head
dimension) dequantizes that device's rows of W_o instead (a few MB at most).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from devices.spec_forward.weights import (
    BlockWeights,
    FloatWeight,
    Int8RowsWeight,
    LinearWeight,
    NBitsWeight,
)
from edge.errors import ConfigError
from edge.format import ModelSpec
from quant.blockwise import dequantize, pack_codes, unpack_codes


@dataclass(frozen=True)
class Share:
    """What one device computes of every block: query heads [heads[0], heads[1]) and FFN
    intermediate columns [ffn[0], ffn[1])."""

    heads: tuple[int, int]
    ffn: tuple[int, int]

    def kv_heads(self, spec: ModelSpec) -> tuple[int, int]:
        """The KV heads its query heads read: [first, last + 1)."""
        group = spec.num_heads // spec.num_kv_heads
        return self.heads[0] // group, (self.heads[1] - 1) // group + 1

    def as_meta(self) -> dict[str, list[int]]:
        return {"heads": list(self.heads), "ffn": list(self.ffn)}

    @classmethod
    def from_meta(cls, spec: ModelSpec, meta: object) -> Share:
        """A share sent by a coordinator, checked against the model (untrusted input)."""
        if not isinstance(meta, dict):
            raise ConfigError("a share is {'heads': [h0, h1], 'ffn': [f0, f1]}")
        bounds = []
        for key, limit in (("heads", spec.num_heads), ("ffn", spec.intermediate_size)):
            pair = meta.get(key)
            if (
                not isinstance(pair, list)
                or len(pair) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
                or not 0 <= pair[0] < pair[1] <= limit
            ):
                raise ConfigError(f"share {key}={pair!r:.40}: not a range within [0, {limit})")
            bounds.append((pair[0], pair[1]))
        return cls(bounds[0], bounds[1])


def split_shares(spec: ModelSpec, weights: Sequence[float], ffn_unit: int = 1) -> list[Share]:
    """One share per device, sized by `weights` (relative speed or memory); every device gets
    at least one head and one `ffn_unit` of columns."""
    count = len(weights)
    if count < 1 or any(not w > 0 for w in weights):
        raise ConfigError(f"share weights must be positive, got {list(weights)}")
    if count > spec.num_heads:
        raise ConfigError(
            f"{count} devices but {spec.num_heads} attention heads: at most one device per head"
        )
    units = spec.intermediate_size // ffn_unit
    if spec.intermediate_size % ffn_unit or count > units:
        raise ConfigError(
            f"cannot cut {spec.intermediate_size} FFN columns in units of {ffn_unit} over "
            f"{count} devices"
        )
    heads = _cuts(spec.num_heads, weights)
    ffn = [c * ffn_unit for c in _cuts(units, weights)]
    return [Share((heads[i], heads[i + 1]), (ffn[i], ffn[i + 1])) for i in range(count)]


def _cuts(total: int, weights: Sequence[float]) -> list[int]:
    """[0, ..., total] cut proportionally to `weights`, every piece at least 1."""
    count, whole = len(weights), float(sum(weights))
    cuts, done = [0], 0.0
    for i, w in enumerate(weights[:-1]):
        done += w
        ideal = round(total * done / whole)
        cuts.append(min(max(ideal, cuts[-1] + 1), total - (count - 1 - i)))
    cuts.append(total)
    return cuts


def ffn_unit(block: BlockWeights) -> int:
    """The FFN cut granularity that keeps W_down's rows whole quantization blocks."""
    return block.down.block_size if isinstance(block.down, NBitsWeight) else 1


@dataclass(frozen=True, eq=False)
class ShardBlock:
    """A device's slices of one block: the matrices restricted to its share. The biases of
    W_o and W_down and the sandwich norms belong to the reduction, not to a share."""

    index: int
    share: Share
    kv: tuple[int, int]
    attn_norm: np.ndarray
    ffn_norm: np.ndarray
    qkv: LinearWeight  # [H, (h + 2 kv) * D]: this share's q, k and v columns
    attn_output: LinearWeight  # [h * D, H], no bias
    gate_up: LinearWeight  # [H, 2 f]: gate columns first, as the block's
    down: LinearWeight  # [f, H], no bias
    q_norm: np.ndarray | None = None
    k_norm: np.ndarray | None = None

    @property
    def nbytes(self) -> int:
        return sum(_weight_bytes(w) for w in (self.qkv, self.attn_output, self.gate_up, self.down))


def shard_block(spec: ModelSpec, block: BlockWeights, share: Share) -> ShardBlock:
    """`block` restricted to `share` (copies of the slices: the full block is not kept)."""
    d, hq, hkv = spec.head_dim, spec.num_heads, spec.num_kv_heads
    kv = share.kv_heads(spec)
    (h0, h1), (f0, f1) = share.heads, share.ffn
    qkv_columns = np.concatenate(
        [
            np.arange(h0 * d, h1 * d),
            hq * d + np.arange(kv[0] * d, kv[1] * d),
            (hq + hkv) * d + np.arange(kv[0] * d, kv[1] * d),
        ]
    )
    f = spec.intermediate_size
    gate_up_columns = np.concatenate([np.arange(f0, f1), f + np.arange(f0, f1)])
    return ShardBlock(
        block.index,
        share,
        kv,
        np.array(block.attn_norm, np.float32),
        np.array(block.ffn_norm, np.float32),
        columns(block.qkv, qkv_columns),
        rows(block.attn_output, h0 * d, h1 * d),
        columns(block.gate_up, gate_up_columns),
        rows(block.down, f0, f1),
        None if block.q_norm is None else np.array(block.q_norm, np.float32),
        None if block.k_norm is None else np.array(block.k_norm, np.float32),
    )


def columns(weight: LinearWeight, picked: np.ndarray) -> LinearWeight:
    """Output columns `picked` of `weight` [K, N] (with their bias)."""
    bias = None if weight.bias is None else np.array(weight.bias[picked], np.float32)
    if isinstance(weight, FloatWeight):
        return FloatWeight(np.ascontiguousarray(weight.weight[:, picked]), bias)
    if isinstance(weight, Int8RowsWeight):
        return Int8RowsWeight(
            np.ascontiguousarray(weight.weight[:, picked]),
            np.ascontiguousarray(weight.scale[picked]),
            bias,
        )
    n_blocks = weight.packed.shape[1]
    zero_points = None
    if weight.zero_points is not None:
        zero_points = np.ascontiguousarray(weight.zero_points.reshape(weight.N, -1)[picked])
        zero_points = zero_points.reshape(-1)
    return NBitsWeight(
        np.ascontiguousarray(weight.packed[picked]),  # MatMulNBits stores W transposed: [N, ...]
        np.ascontiguousarray(weight.scales.reshape(weight.N, n_blocks)[picked]).reshape(-1),
        zero_points,
        weight.K,
        len(picked),
        weight.bits,
        weight.block_size,
        bias,
    )


def rows(weight: LinearWeight, start: int, end: int) -> LinearWeight:
    """Input rows [start, end) of `weight` [K, N], without its bias (the reduction adds it)."""
    if isinstance(weight, FloatWeight):
        return FloatWeight(np.ascontiguousarray(weight.weight[start:end]))
    if isinstance(weight, Int8RowsWeight):
        # Its activations round per token over all K rows: a slice would round differently.
        matrix = weight.weight[start:end].astype(np.float32) * weight.scale
        return FloatWeight(np.ascontiguousarray(matrix))
    size = weight.block_size
    if start % size or (end % size and end != weight.K):
        whole = dequantize(weight.quantized())  # [K, N]; a cut inside a block
        return FloatWeight(np.ascontiguousarray(whole[start:end]))
    b0, b1 = start // size, -(-end // size)
    zero_points = None
    if weight.zero_points is not None:
        if weight.zero_points.dtype == np.uint8:
            codes = unpack_codes(weight.zero_points.reshape(weight.N, -1), weight.bits)
            zero_points = pack_codes(codes[:, b0:b1], weight.bits, pad=2 ** (weight.bits - 1))
        else:
            zero_points = weight.zero_points.reshape(weight.N, -1)[:, b0:b1]
        zero_points = np.ascontiguousarray(zero_points).reshape(-1)
    n_blocks = weight.packed.shape[1]
    return NBitsWeight(
        np.ascontiguousarray(weight.packed[:, b0:b1]),
        np.ascontiguousarray(weight.scales.reshape(weight.N, n_blocks)[:, b0:b1]).reshape(-1),
        zero_points,
        end - start,
        weight.N,
        weight.bits,
        weight.block_size,
    )


def _weight_bytes(weight: LinearWeight) -> int:
    if isinstance(weight, NBitsWeight):
        zp = 0 if weight.zero_points is None else weight.zero_points.nbytes
        return weight.packed.nbytes + weight.scales.nbytes + zp
    extra = weight.scale.nbytes if isinstance(weight, Int8RowsWeight) else 0
    return weight.weight.nbytes + extra
