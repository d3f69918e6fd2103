"""The numpy spec forward against the ONNX graphs edge runs today (edge.engine.Engine on ONNX
Runtime): logits, greedy tokens and the KV cache, on float32, int4 and int4-mixed packages.
Tolerances and why: see spec_forward_parity.py."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
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

from devices.spec_forward import (
    DequantizingLinear,
    ForwardConfig,
    Int8RowsWeight,
    LinearWeight,
    NBitsWeight,
    NumpyForward,
    UnsupportedPartError,
    block_forward,
    load_model_weights,
    map_part,
    part_weights,
    rope_tables,
    view_tensors,
)
from edge.errors import ConfigError, ContextOverflowError
from edge.format import read_manifest
from edge.package import open_package


def _model(package: Path, **kwargs: object) -> NumpyForward:
    weights = load_model_weights(open_package(package))
    return NumpyForward(weights, ForwardConfig(MAX_CONTEXT), **kwargs)


def test_spec_forward_numpy_fp32_matches_onnx(
    smollm2_package: Path, ort_reference: Callable[[Path], Run]
) -> None:
    """SmolLM2 fp32: 12 prompt + 4 decode logits within FP32_RTOL, 16 greedy tokens equal,
    and the KV cache holds what ORT's GroupQueryAttention wrote."""
    expected = ort_reference(smollm2_package)
    model = _model(smollm2_package)
    actual = run(model, prompt_ids(smollm2_package), GREEDY_STEPS)
    assert actual.logits.shape == (PROMPT_TOKENS + DECODE_STEPS, model.spec.vocab_size)
    error = scaled_error(actual.logits, expected.logits)
    print(f"fp32: max |diff| {error:.1e} of the logit scale")
    assert error <= FP32_RTOL
    assert actual.tokens == expected.tokens
    assert model.position == PROMPT_TOKENS + GREEDY_STEPS - 1
    for ours, theirs in zip(actual.keys + actual.values, expected.keys + expected.values):
        assert ours.shape[2] == model.position
        assert scaled_error(ours, theirs) <= FP32_RTOL


def test_spec_forward_numpy_int4_close_to_int8_activations(
    smollm2_int4_package: Path, smollm2_int4_control: tuple[Run, np.ndarray]
) -> None:
    """SmolLM2 int4 at accuracy_level 4: ORT rounds activations to int8, we do not, so the
    check is relative (see spec_forward_parity.py); ORT's tokens are forced on both."""
    ort_int4, ort_fp32 = smollm2_int4_control
    weights = load_model_weights(open_package(smollm2_int4_package))
    assert isinstance(weights.blocks[0].qkv, NBitsWeight) and weights.embed.table.quantized
    ours = run(
        NumpyForward(weights, ForwardConfig(MAX_CONTEXT)),
        prompt_ids(smollm2_int4_package),
        DECODE_STEPS + 1,
        forced=ort_int4.tokens,
    )
    assert_close_to_int8_activations(ours.logits, ort_int4.logits, ort_fp32)


@pytest.mark.parametrize("kind", ["fp32", "int4-mixed"])
def test_spec_forward_numpy_tiny_qwen2_matches_onnx(
    kind: str, tiny_qwen2_packages: dict[str, Path], ort_reference: Callable[[Path], Run]
) -> None:
    """Q/K/V biases, an untied head, 4- and 8-bit blocks with zero points (float32 in ORT)."""
    package = tiny_qwen2_packages[kind]
    expected = ort_reference(package)
    weights = load_model_weights(open_package(package))
    assert weights.blocks[0].qkv.bias is not None
    if kind == "int4-mixed":
        bits = {w.bits for b in weights.blocks for w in b.linears}
        assert bits == {4, 8} and weights.blocks[0].down.zero_points is not None
    actual = run(
        NumpyForward(weights, ForwardConfig(MAX_CONTEXT)), prompt_ids(package), GREEDY_STEPS
    )
    assert np.abs(expected.logits).max() > 1.0, "flat logits would prove nothing"
    assert scaled_error(actual.logits, expected.logits) <= FP32_RTOL
    assert actual.tokens == expected.tokens


def test_spec_forward_numpy_w8a8_matches_onnx(
    tiny_qwen2_packages: dict[str, Path], ort_reference: Callable[[Path], Run]
) -> None:
    """w8a8 (int8 rows x activations rounded to int8 per token, MatMulInteger): the spec
    forward rounds each token's activations as the graphs do, so it follows ORT far closer than
    the float model does (a rounding tie may still fall the other way), with the same tokens."""
    package = tiny_qwen2_packages["w8a8"]
    expected = ort_reference(package)
    weights = load_model_weights(open_package(package))
    assert all(isinstance(w, Int8RowsWeight) for b in weights.blocks for w in b.linears)
    assert isinstance(weights.head.output, Int8RowsWeight)
    actual = run(
        NumpyForward(weights, ForwardConfig(MAX_CONTEXT)), prompt_ids(package), GREEDY_STEPS
    )
    float_model = ort_reference(tiny_qwen2_packages["fp32"])
    gap = scaled_error(float_model.logits, expected.logits)
    error = scaled_error(actual.logits, expected.logits)
    print(f"w8a8: spec vs ORT {error:.1e}, fp32 vs w8a8 {gap:.1e} of the logit scale")
    assert error <= 0.1 * gap
    assert actual.tokens == expected.tokens


def test_spec_forward_numpy_pluggable_linear(tiny_qwen2_packages: dict[str, Path]) -> None:
    """Every matmul goes through the kernel handed in, with [M, K] inputs and [K, N] weights;
    an uncached kernel gives bit-identical logits."""
    package = tiny_qwen2_packages["int4-mixed"]
    calls: list[tuple[int, int, int]] = []
    plain = DequantizingLinear(cache=False)

    def recording(x: np.ndarray, weight: LinearWeight) -> np.ndarray:
        assert x.shape[1] == weight.K
        calls.append((x.shape[0], weight.K, weight.N))
        return plain(x, weight)

    ids = prompt_ids(package)
    recorded = _model(package, linear=recording).prefill(ids)
    spec = read_manifest(package).spec
    assert len(calls) == 4 * spec.num_layers + 1
    assert calls[-1] == (1, spec.hidden_size, spec.vocab_size)  # the head: last position only
    assert all(m == len(ids) for m, _, _ in calls[:-1])
    np.testing.assert_array_equal(recorded, _model(package).prefill(ids))


def test_spec_forward_numpy_block_from_streaming_buffers(
    tiny_qwen2_packages: dict[str, Path],
) -> None:
    """A block's weights viewed in a buffer holding its file (as a streaming window does)
    compute exactly what its memory maps do."""
    package = tiny_qwen2_packages["int4-mixed"]
    manifest = read_manifest(package)
    spec, part = manifest.spec, manifest.blocks[1]
    buffer = bytearray((package / part.tensors[0].file).read_bytes())
    viewed = part_weights(spec, part, view_tensors(part, {part.tensors[0].file: buffer}))
    mapped = part_weights(spec, part, map_part(open_package(package), part))
    x = np.random.default_rng(0).normal(size=(1, 5, spec.hidden_size)).astype(np.float32)
    rope = rope_tables(spec, 16)
    outs = []
    for weights in (viewed, mapped):
        cache = [np.zeros((1, spec.num_kv_heads, 16, spec.head_dim), np.float32) for _ in range(2)]
        outs.append(block_forward(spec, weights, x, *cache, 3, rope))
        assert np.all(cache[0][:, :, :3] == 0) and np.all(cache[0][:, :, 3:8] != 0)
    np.testing.assert_array_equal(*outs)


def test_spec_forward_numpy_decode_equals_prefill(tiny_qwen2_packages: dict[str, Path]) -> None:
    """Token by token or all at once: the same logits (the cache and positions line up)."""
    package = tiny_qwen2_packages["fp32"]
    ids = prompt_ids(package)
    model = _model(package)
    together = model.prefill(ids, all_logits=True)
    model.reset()
    one_by_one = np.stack([model.prefill(ids[:1])[0], *(model.decode(t) for t in ids[1:])])
    np.testing.assert_allclose(one_by_one, together, rtol=0, atol=1e-5)
    model.rewind(4)
    np.testing.assert_allclose(
        model.prefill(ids[4:], all_logits=True), together[4:], rtol=0, atol=1e-5
    )


def test_spec_forward_numpy_refuses_what_it_cannot_run(
    tiny_qwen2_packages: dict[str, Path],
) -> None:
    package = tiny_qwen2_packages["fp32"]
    manifest = read_manifest(package)
    spec, part = manifest.spec, manifest.blocks[0]
    arrays = map_part(open_package(package), part)
    qdq = replace(
        part,
        tensors=tuple(
            replace(t, name=f"{t.name}.int8") if "ffn_down" in t.name else t for t in part.tensors
        ),
    )
    with pytest.raises(UnsupportedPartError, match="static int8"):
        part_weights(spec, qdq, arrays)
    with pytest.raises(UnsupportedPartError, match=r"attn_qkv\.bias"):
        part_weights(spec, part, {k: v for k, v in arrays.items() if "bias" not in k})
    with pytest.raises(UnsupportedPartError, match="architecture 'gemma'"):
        part_weights(replace(spec, architecture="gemma"), part, arrays)
    model = NumpyForward(load_model_weights(open_package(package)), ForwardConfig(max_context=8))
    with pytest.raises(ContextOverflowError):
        model.prefill(list(range(9)))
    with pytest.raises(ConfigError, match="max_context"):
        ForwardConfig(max_context=0)
    with pytest.raises(ConfigError, match="batch 1"):
        block_forward(
            spec,
            model.weights.blocks[0],
            np.zeros((2, 1, spec.hidden_size), np.float32),
            model.keys[0],
            model.values[0],
            0,
            model.rope,
        )


def test_spec_forward_numpy_imports_without_torch() -> None:
    """The package (and the numpy forward) never import torch; TorchForward does, lazily."""
    code = (
        "import sys, devices.spec_forward as s; s.NumpyForward; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[3])
