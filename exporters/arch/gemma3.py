"""Gemma 3 text decoder (gemma-3-270m, gemma-3-1b): the llama graphs with the block features
its declaration turns on (edge/architectures.py: GEMMA3).

One block, shapes for batch B, step length S, hidden H, head size D:

    x [B,S,H] -> RMSNorm -> MatMul(W_qkv) -> Split q/k/v -> RMSNorm of each q and k head [D]
    -> rope (sliding layers: base 10k, rotated in the graph; global layers: base 1M, inside
    GroupQueryAttention from the runtime's tables) -> GroupQueryAttention (scale
    query_pre_attn_scalar^-0.5; sliding layers: local_window_size) -> MatMul(W_o) -> RMSNorm
    -> + x -> RMSNorm -> MatMul(W_gate_up) -> gelu_tanh(gate) * up -> MatMul(W_down)
    -> RMSNorm -> + residual

The embedding is scaled by sqrt(H) in the embed graph; the head is tied to the embedding.
Norm weights are stored as Gemma's `1 + w` (GGUF files already hold it; the Hugging Face source
adds it), so every runtime multiplies by the stored vector as for Llama.
"""

from __future__ import annotations

from typing import ClassVar

from edge.architectures import GEMMA3, Declaration
from exporters.arch.llama import LlamaArchitecture


class Gemma3Architecture(LlamaArchitecture):
    declaration: ClassVar[Declaration] = GEMMA3
