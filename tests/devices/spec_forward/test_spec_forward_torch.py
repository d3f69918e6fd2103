"""The PyTorch spec forward (CPU here; the same code runs on CUDA / MPS) against the ONNX graphs
edge runs today (edge.engine.Engine on ONNX Runtime). Tolerances: see spec_forward_parity.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from spec_forward_parity import (
    DECODE_STEPS,
    FP32_RTOL,
    GREEDY_STEPS,
    MAX_CONTEXT,
    PROMPT_TOKENS,
    Run,
    assert_close_to_int8_activations,
    prompt_ids,
    run,
    scaled_error,
)

torch = pytest.importorskip("torch")

from devices.spec_forward import TorchForward, TorchForwardConfig  # noqa: E402
from edge.errors import ConfigError, ContextOverflowError  # noqa: E402
from edge.package import open_package  # noqa: E402

# float16 / bfloat16 weights, activations and cache (norms, rope, softmax in float32), measured
# on the tiny Qwen2 (3 layers, random weights of std 0.2): 3.3e-3 (fp16) and 3.9e-2 (bf16) of
# the logit scale: 11 and 8 significant bits per rounding, the residual stream rounded too.
HALF_RTOL = {"float16": 1e-2, "bfloat16": 8e-2}


def _model(package: Path, **config: object) -> TorchForward:
    config = TorchForwardConfig(max_context=MAX_CONTEXT, **config)
    return TorchForward.from_package(open_package(package), config)


def test_spec_forward_torch_fp32_matches_onnx(
    smollm2_package: Path, ort_reference: Callable[[Path], Run]
) -> None:
    """SmolLM2 fp32: 12 prompt + 4 decode logits within FP32_RTOL, 16 greedy tokens equal,
    and the cache holds what ORT's GroupQueryAttention wrote."""
    expected = ort_reference(smollm2_package)
    model = _model(smollm2_package)
    actual = run(model, prompt_ids(smollm2_package), GREEDY_STEPS)
    assert actual.logits.shape == (PROMPT_TOKENS + DECODE_STEPS, model.spec.vocab_size)
    error = scaled_error(actual.logits, expected.logits)
    print(f"fp32: max |diff| {error:.1e} of the logit scale")
    assert error <= FP32_RTOL
    assert actual.tokens == expected.tokens
    for ours, theirs in zip(actual.keys + actual.values, expected.keys + expected.values):
        assert scaled_error(ours, theirs) <= FP32_RTOL


def test_spec_forward_torch_int4_close_to_int8_activations(
    smollm2_int4_package: Path, smollm2_int4_control: tuple[Run, np.ndarray]
) -> None:
    """SmolLM2 int4 at accuracy_level 4 (ORT rounds activations to int8; see the parity
    module): relative check, ORT's tokens forced."""
    ort_int4, ort_fp32 = smollm2_int4_control
    ours = run(
        _model(smollm2_int4_package),
        prompt_ids(smollm2_int4_package),
        DECODE_STEPS + 1,
        forced=ort_int4.tokens,
    )
    assert_close_to_int8_activations(ours.logits, ort_int4.logits, ort_fp32)


@pytest.mark.parametrize("kind", ["fp32", "int4-mixed"])
def test_spec_forward_torch_tiny_qwen2_matches_onnx(
    kind: str, tiny_qwen2_packages: dict[str, Path], ort_reference: Callable[[Path], Run]
) -> None:
    """Q/K/V biases, an untied head, 4- and 8-bit blocks with zero points (float32 in ORT)."""
    package = tiny_qwen2_packages[kind]
    expected = ort_reference(package)
    actual = run(_model(package), prompt_ids(package), GREEDY_STEPS)
    assert scaled_error(actual.logits, expected.logits) <= FP32_RTOL
    assert actual.tokens == expected.tokens


@pytest.mark.parametrize("dtype", sorted(HALF_RTOL))
def test_spec_forward_torch_half_precision(
    dtype: str, tiny_qwen2_packages: dict[str, Path], ort_reference: Callable[[Path], Run]
) -> None:
    """The GPU dtypes, run on the CPU: close to ORT's float32 within their rounding."""
    package = tiny_qwen2_packages["fp32"]
    expected = ort_reference(package)
    model = _model(package, dtype=dtype)
    assert model.keys[0].dtype == getattr(torch, dtype)
    actual = run(model, prompt_ids(package), DECODE_STEPS + 1, forced=expected.tokens)
    error = scaled_error(actual.logits, expected.logits)
    print(f"{dtype}: {error:.2e} of the logit scale")
    assert error <= HALF_RTOL[dtype]


def test_spec_forward_torch_config_and_limits(tiny_qwen2_packages: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="dtype='float64'"):
        TorchForwardConfig(dtype="float64")
    with pytest.raises(ConfigError, match="device='gpu0'"):
        TorchForwardConfig(device="gpu0")
    with pytest.raises(ConfigError, match="max_context"):
        TorchForwardConfig(max_context=0)
    model = TorchForward.from_package(
        open_package(tiny_qwen2_packages["fp32"]), TorchForwardConfig(max_context=8)
    )
    with pytest.raises(ContextOverflowError):
        model.prefill(list(range(9)))
    model.prefill(list(range(8)))
    with pytest.raises(ContextOverflowError):
        model.decode(1)
