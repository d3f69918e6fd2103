"""The PyTorch forward: the numpy forward's math on a torch device (CUDA, Apple MPS, or CPU).

Weights are uploaded once. Block-quantized (int4/int8) weights are dequantized on the host by
quant's numpy reference and uploaded as dense [K, N] matrices in the compute dtype, rather
than kept packed and dequantized per call: one dequantization path shared with the numpy
reference (so both backends multiply by the same numbers), plain matmuls that use the GPU's
tensor cores, and no custom kernel to maintain. The price is device memory: 4x (fp16) the
int4 bytes, which is fine for the small models edge puts on a GPU. The embedding table stays on
the host (a step's rows are gathered there, as the numpy forward does, and copied up): a
quantized table need not be dequantized whole, and a tied float head shares no second copy.

This module imports torch at import time; `devices.spec_forward` imports it only when
`TorchForward` is asked for, so nothing in devices/ needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

try:
    import torch
except ImportError as exc:  # this module is the PyTorch path; the rest of devices/ is not
    raise ImportError(
        "the PyTorch forward needs torch (CUDA on Jetson/NVIDIA, MPS on Macs): pip install torch"
    ) from exc

from devices.spec_forward.numpy_forward import (
    DEFAULT_MAX_CONTEXT,
    DequantizingLinear,
    StepRunner,
    embedding_rows,
    layer_rope,
    rope_tables,
)
from devices.spec_forward.weights import (
    BlockWeights,
    EmbedWeights,
    HeadWeights,
    Int8RowsWeight,
    LinearWeight,
    ModelWeights,
    PackageTensors,
    load_model_weights,
)
from edge.architectures import attention_scale, is_sliding
from edge.errors import ConfigError, ContextOverflowError
from edge.format import ModelSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class TorchForwardConfig:
    """`device`: a torch device string ("cuda", "cuda:1", "mps", "cpu"); `dtype`: weights,
    activations and KV cache (norms, rope and softmax always run in float32); `max_context`:
    KV cache length (None: min(4096, the model's maximum))."""

    device: str = "cpu"
    dtype: str = "float32"
    max_context: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ConfigError(
                f"TorchForwardConfig.dtype={self.dtype!r}; choose one of {list(DTYPES)}"
            )
        if self.max_context is not None and self.max_context < 1:
            raise ConfigError(f"TorchForwardConfig.max_context={self.max_context}; must be >= 1")
        try:
            torch.device(self.device)
        except RuntimeError as exc:
            raise ConfigError(
                f"TorchForwardConfig.device={self.device!r} is not a torch device: {exc}"
            ) from exc


@dataclass(frozen=True)
class _Linear:
    weight: torch.Tensor  # [K, N]
    bias: torch.Tensor | None
    per_token: bool = False  # int8 rows: round x to int8 per token first, as their graphs do

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_token:
            scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127
            x = torch.round(x / scale).clamp(-128, 127) * scale
        out = x @ self.weight
        return out if self.bias is None else out + self.bias


@dataclass(frozen=True)
class _Block:
    attn_norm: torch.Tensor
    ffn_norm: torch.Tensor
    qkv: _Linear
    attn_output: _Linear
    gate_up: _Linear
    down: _Linear
    # the spec's features (edge/architectures.py); None where it has not them
    q_norm: torch.Tensor | None = None  # [D]
    k_norm: torch.Tensor | None = None
    post_attention_norm: torch.Tensor | None = None  # [H]
    post_ffw_norm: torch.Tensor | None = None
    cos: torch.Tensor | None = None  # [max_context, D/2]: this layer's own rope base
    sin: torch.Tensor | None = None


class TorchParts:
    """Consecutive parts of a package on a torch device: the embedding (rows gathered on the
    host), blocks with their own KV cache on the device, the head. What the `torch` backend
    runs as one segment, and `TorchForward` as a whole model.

    x: [S, H] in the compute dtype between blocks; logits come back as numpy float32.
    """

    def __init__(
        self,
        spec: ModelSpec,
        config: TorchForwardConfig,
        max_context: int,
        embed: EmbedWeights | None = None,
        blocks: Sequence[BlockWeights] = (),
        head: HeadWeights | None = None,
    ) -> None:
        self.spec, self.config, self.max_context = spec, config, max_context
        self.device = torch.device(config.device)
        self.dtype = DTYPES[config.dtype]
        self._embed = embed
        self._rope = rope_tables(spec, max_context)
        self._dequantize = DequantizingLinear(cache=False)  # each matrix is uploaded once anyway
        self._blocks = [(b.index, self._block(b)) for b in blocks]
        self._activation = ACTIVATIONS[spec.activation]
        self._head_norm = None if head is None else self._vector(head.norm)
        self._head = None if head is None else self._upload(head.output)
        cos, sin = self._rope
        self._cos = torch.from_numpy(cos).to(self.device)  # [max_context, D/2] float32
        self._sin = torch.from_numpy(sin).to(self.device)
        shape = (1, spec.num_kv_heads, max_context, spec.head_dim)
        self.keys = {
            i: torch.zeros(shape, dtype=self.dtype, device=self.device) for i, _ in self._blocks
        }
        self.values = {i: torch.zeros_like(k) for i, k in self.keys.items()}

    # ---- upload ---------------------------------------------------------------------------------
    def _tensor(self, array: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
        # a private copy: memory maps are read-only, which torch.from_numpy warns about
        return torch.from_numpy(np.array(array, np.float32)).to(self.device, dtype)

    def _vector(self, array: np.ndarray) -> torch.Tensor:
        return self._tensor(array, torch.float32)

    def _upload(self, weight: LinearWeight) -> _Linear:
        bias = None if weight.bias is None else self._tensor(weight.bias, self.dtype)
        return _Linear(
            self._tensor(self._dequantize.matrix(weight), self.dtype),
            bias,
            per_token=isinstance(weight, Int8RowsWeight),
        )

    def _block(self, b: BlockWeights) -> _Block:
        def vector(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else self._vector(array)

        tables = layer_rope(self.spec, b.index, self._rope)
        cos, sin = (
            (None, None)
            if tables is self._rope
            else (self._vector(tables[0]), self._vector(tables[1]))
        )
        return _Block(
            self._vector(b.attn_norm),
            self._vector(b.ffn_norm),
            self._upload(b.qkv),
            self._upload(b.attn_output),
            self._upload(b.gate_up),
            self._upload(b.down),
            vector(b.q_norm),
            vector(b.k_norm),
            vector(b.post_attention_norm),
            vector(b.post_ffw_norm),
            cos,
            sin,
        )

    # ---- forward --------------------------------------------------------------------------------
    def embed(self, ids: np.ndarray) -> torch.Tensor:
        """ids [S] -> x [S, H] on the device (rows gathered on the host, then copied up)."""
        assert self._embed is not None
        rows = embedding_rows(self._embed.table, ids)
        if self._embed.scale != 1.0:
            rows = rows * np.float32(self._embed.scale)
        return self.upload_hidden(rows)

    def upload_hidden(self, hidden: np.ndarray) -> torch.Tensor:
        """Host activations [S, H] float32 -> the device, in the compute dtype."""
        return torch.from_numpy(np.ascontiguousarray(hidden)).to(self.device, self.dtype)

    @torch.inference_mode()
    def blocks(self, x: torch.Tensor, position: int) -> torch.Tensor:
        """x [S, H] at `position` through every block held; writes their caches in place."""
        for i, block in self._blocks:
            x = self._block_forward(i, block, x, position)
        return x

    @torch.inference_mode()
    def head(self, x: torch.Tensor, index: np.ndarray) -> np.ndarray:
        """Logits [len(index), V] float32 (numpy) of the rows `index` of x [S, H]."""
        assert self._head is not None and self._head_norm is not None
        picked = x[torch.from_numpy(np.asarray(index, np.int64)).to(self.device)]
        normed = _rms_norm(picked, self._head_norm, self.spec.rms_norm_eps)
        return self._head(normed).float().cpu().numpy()

    def _block_forward(self, i: int, b: _Block, x: torch.Tensor, position: int) -> torch.Tensor:
        """x: [S, H] -> [S, H]; writes the step's keys/values into the cache in place."""
        spec: ModelSpec = self.spec
        s, d, hq, hkv = x.shape[0], spec.head_dim, spec.num_heads, spec.num_kv_heads
        start, end = position, position + s
        if end > self.max_context:
            raise ContextOverflowError(
                f"{start} cached + {s} new tokens exceed the KV cache of {self.max_context}"
            )
        qkv = b.qkv(_rms_norm(x, b.attn_norm, spec.rms_norm_eps))
        q = qkv[:, : hq * d].reshape(s, hq, d).transpose(0, 1)  # [H_q, S, D]
        k = qkv[:, hq * d : (hq + hkv) * d].reshape(s, hkv, d).transpose(0, 1)  # [H_kv, S, D]
        v = qkv[:, (hq + hkv) * d :].reshape(s, hkv, d).transpose(0, 1)
        if b.q_norm is not None and b.k_norm is not None:  # per head, over D
            q = _rms_norm(q, b.q_norm, spec.rms_norm_eps)
            k = _rms_norm(k, b.k_norm, spec.rms_norm_eps)
        cos, sin = (self._cos, self._sin) if b.cos is None or b.sin is None else (b.cos, b.sin)
        cos, sin = cos[start:end], sin[start:end]
        self.keys[i][0, :, start:end] = _rope(k, cos, sin)
        self.values[i][0, :, start:end] = v
        window = spec.sliding_window if is_sliding(spec, i) else 0
        attn = _attention(
            _rope(q, cos, sin),
            self.keys[i][0, :, :end],
            self.values[i][0, :, :end],
            start,
            attention_scale(spec),
            window,
        )
        projected = b.attn_output(attn)
        if b.post_attention_norm is not None:
            projected = _rms_norm(projected, b.post_attention_norm, spec.rms_norm_eps)
        residual = x + projected
        gate, up = b.gate_up(_rms_norm(residual, b.ffn_norm, spec.rms_norm_eps)).chunk(2, dim=-1)
        down = b.down(self._activation(gate) * up)
        if b.post_ffw_norm is not None:
            down = _rms_norm(down, b.post_ffw_norm, spec.rms_norm_eps)
        return residual + down


class TorchForward(StepRunner):
    """A whole package on a torch device; same `prefill`/`decode` as edge's Engine.

    >>> cfg = TorchForwardConfig(device="cuda", dtype="float16")
    >>> model = TorchForward.from_package(open_package("smollm2-pkg"), cfg)  # doctest: +SKIP
    >>> logits = model.prefill([1, 2, 3])  # numpy [1, V], float32
    """

    def __init__(self, weights: ModelWeights, config: TorchForwardConfig | None = None) -> None:
        config = self.config = config or TorchForwardConfig()
        spec = self.spec = weights.spec
        self.max_context = config.max_context or min(
            DEFAULT_MAX_CONTEXT, spec.max_position_embeddings
        )
        self.position = 0
        self.parts = TorchParts(
            spec, config, self.max_context, weights.embed, weights.blocks, weights.head
        )

    @property
    def keys(self) -> list[torch.Tensor]:
        return [self.parts.keys[i] for i in range(self.spec.num_layers)]

    @property
    def values(self) -> list[torch.Tensor]:
        return [self.parts.values[i] for i in range(self.spec.num_layers)]

    @classmethod
    def from_package(
        cls, package: PackageTensors, config: TorchForwardConfig | None = None
    ) -> TorchForward:
        """From an opened package (`edge.package.open_package`)."""
        return cls(load_model_weights(package), config)

    @torch.inference_mode()
    def _forward(self, ids: np.ndarray, all_logits: bool) -> np.ndarray:
        x = self.parts.blocks(self.parts.embed(ids), self.position)
        index = np.arange(len(ids)) if all_logits else np.array([len(ids) - 1])
        return self.parts.head(x, index)


ACTIVATIONS = {
    "silu": torch.nn.functional.silu,
    "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
}


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32 whatever the compute dtype. x: [..., H]."""
    xf = x.float()
    normed = xf / torch.sqrt(xf.square().mean(dim=-1, keepdim=True) + eps)
    return (normed * weight).to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Half rotation in float32. x: [heads, S, D]; cos, sin: [S, D/2]."""
    xf = x.float()
    x1, x2 = xf.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


def _attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    position: int,
    scale: float,
    window: int = 0,
) -> torch.Tensor:
    """Causal GQA, softmax in float32. q: [H_q, S, D]; keys, values: [H_kv, T, D]; `window`
    > 0: a query sees only the last `window` keys, itself included. Returns [S, H_q * D]."""
    hq, s, d = q.shape
    hkv, t, _ = keys.shape
    grouped = q.reshape(hkv, hq // hkv, s, d)  # [H_kv, G, S, D]
    scores = (grouped @ keys.unsqueeze(1).transpose(-1, -2)).float() * scale
    rows = torch.arange(s, device=q.device)[:, None] + position
    keys_at = torch.arange(t, device=q.device)[None, :]
    visible = keys_at <= rows  # [S, T]
    if window:
        visible &= keys_at > rows - window
    probs = scores.masked_fill(~visible, float("-inf")).softmax(dim=-1).to(values.dtype)
    out = probs @ values.unsqueeze(1)  # [H_kv, G, S, D]
    return out.reshape(hq, s, d).transpose(0, 1).reshape(s, hq * d)
