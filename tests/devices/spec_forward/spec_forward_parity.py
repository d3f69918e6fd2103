"""Shared by the spec-forward tests: one run protocol for edge's Engine and the spec forwards
(both have `reset`, `prefill(ids, all_logits)` and `decode(token)`), and the tolerances.

Tolerances (measured on this machine, SmolLM2-135M, 30 layers, logits up to ~31):
- float32, and int4-mixed at accuracy_level 0: both sides compute in float32 on the same
  (dequantized) weights and differ only in summation order: at most 4e-6 of the logit scale
  (SmolLM2, numpy and torch; 1.5e-6 on the tiny Qwen2). `FP32_RTOL = 1e-4` of the scale
  leaves 25x headroom; a real bug (a missing bias, a wrong rope half, a wrong KV head) moves
  logits by whole units.
- int4 at accuracy_level 4 (how `edge quantize` packages run): ORT's MatMulNBits rounds each
  block of 32 activations to int8 before the dot product (emulating that per op matches one
  op to 4e-6, but not a whole model: rounding ties fall differently); the spec forward
  multiplies float32 activations by the same dequantized weights. Over 30 layers the logits
  differ by up to 1.6 (this prompt; 2.3 on another), so the check is relative to what that
  rounding does at all: the spec forward must sit much closer to ORT's int4 logits than ORT's
  fp32 logits do (1.6 vs 16.8 measured: 0.1 of it), and pick the same top token wherever
  ORT's top two are not a near tie (16/16 here; on another prompt one flip, where ORT's top
  two were 0.008 apart and the spec forward's logit for ORT's token 0.054 below its top).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.package import open_package
from edge.tokenizer import Tokenizer

PROMPT = "Rotary embeddings rotate queries and keys by an angle that grows with position."
PROMPT_TOKENS = 12
DECODE_STEPS = 4  # decode steps whose logits are compared
GREEDY_STEPS = 16
MAX_CONTEXT = 64

FP32_RTOL = 1e-4
INT8_ACT_CONTROL = 0.35  # max|spec - ort int4| <= this x max|ort fp32 - ort int4|
INT8_ACT_TOP_GAP = 0.25  # the other side's top token is within this of one's own top logit
INT8_ACT_AGREE = 14  # of PROMPT_TOKENS + DECODE_STEPS positions with the same top token


@dataclass(frozen=True)
class Run:
    tokens: list[int]  # chosen after the prompt: greedy, or the forced ones
    logits: np.ndarray  # [PROMPT_TOKENS + DECODE_STEPS, V]: each prompt position, then decodes
    keys: list[np.ndarray]  # per layer [1, H_kv, position, D]: the cache after the run
    values: list[np.ndarray]


def prompt_ids(package: Path) -> list[int]:
    ids = Tokenizer.from_package(open_package(package)).encode(PROMPT)
    assert len(ids) >= PROMPT_TOKENS
    return ids[:PROMPT_TOKENS]


def run(model: Any, prompt: list[int], steps: int, forced: list[int] | None = None) -> Run:
    """Prefill `prompt`, then choose `steps` tokens (greedy, or `forced`), feeding all but the
    last; keeps the prompt's logits and the first DECODE_STEPS decode steps'."""
    model.reset()
    rows = list(np.array(model.prefill(prompt, all_logits=True), np.float32))
    last, tokens = rows[-1], []
    for i in range(steps):
        tokens.append(int(np.argmax(last)) if forced is None else forced[i])
        if i + 1 < steps:
            last = np.array(model.decode(tokens[-1]), np.float32)
            if len(rows) < PROMPT_TOKENS + DECODE_STEPS:
                rows.append(last)
    keys, values = (
        (model.cache.keys, model.cache.values)
        if hasattr(model, "cache")
        else (model.keys, model.values)
    )
    held = slice(0, model.position)
    return Run(
        tokens, np.stack(rows), *([_numpy(a[:, :, held]) for a in side] for side in (keys, values))
    )


def _numpy(array: Any) -> np.ndarray:
    """A copy as float32 numpy, from numpy or a torch tensor on any device."""
    if hasattr(array, "detach"):
        return array.detach().float().cpu().numpy()
    return np.array(array, np.float32)


def scaled_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| relative to the largest |expected| logit."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


def assert_close_to_int8_activations(
    ours: np.ndarray, ort_int4: np.ndarray, ort_fp32: np.ndarray
) -> None:
    """The int4 / accuracy_level 4 check described in the module docstring."""
    ours_gap = ours.max(-1) - ours[np.arange(len(ours)), ort_int4.argmax(-1)]
    ort_gap = ort_int4.max(-1) - ort_int4[np.arange(len(ours)), ours.argmax(-1)]
    diff = np.abs(ours - ort_int4).max()
    rounding = np.abs(ort_fp32 - ort_int4).max()
    agree = int((ours.argmax(-1) == ort_int4.argmax(-1)).sum())
    print(
        f"int4/level 4: max|spec-ort| {diff:.3f}, max|ort fp32-ort int4| {rounding:.3f}, "
        f"top-1 agreement {agree}/{len(ours)}, worst top gaps {ours_gap.max():.3f} / "
        f"{ort_gap.max():.3f}"
    )
    assert diff <= INT8_ACT_CONTROL * rounding
    assert agree >= INT8_ACT_AGREE
    assert ours_gap.max() <= INT8_ACT_TOP_GAP and ort_gap.max() <= INT8_ACT_TOP_GAP
