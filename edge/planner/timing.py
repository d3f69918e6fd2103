"""Predicted seconds per part: a roofline per device, with each runtime's measured kernel speed.

A decode step reads every matmul weight once and does two FLOPs per weight, so on every device
of interest it is bound by memory: seconds = effective bytes read / (bandwidth x efficiency).
"Effective" bytes stretch the bytes on disk by how the runtime holds and reads them: ONNX
Runtime's int4 MatMulNBits is compute-bound on this CPU (17 GB/s of int4 weights against
28 GB/s of DRAM measured on the reference VM), OpenVINO reads the 8/16-bit copies it re-packed
(memory.py). A prompt step multiplies a chunk of tokens at once and is bound by compute:
seconds = FLOPs / (the device's GEMM rate x efficiency x the kernel's measured fraction of it).

Calibrated against edge's own measurements on a quiet machine (BENCHMARKS.md, 2 threads,
fp32 GEMM 246 GFLOP/s and 29 GB/s measured by devices/microbench.py): SmolLM2 fp32 decode
44 tok/s and prompt 1015 tok/s, int4 146 and 720 tok/s, Qwen2.5-0.5B int4 44 and 331 tok/s;
the streamed backend's constants against bench/bench_plan.py's streamed runs (its numpy forward
and llvmlite kernel reach ~30-35 GFLOP/s on prompts here). `bench/bench_plan.py` compares
every prediction with measured runs. Not modelled: a busy machine (ONNX Runtime's spinning
thread pool loses half its speed when another process takes a core) and the one-off JIT
compile of the streamed backend's kernels in its first prompt.
"""

from __future__ import annotations

from collections.abc import Mapping

from devices.profiles import DeviceProfile
from edge.planner.costs import (
    INT8_ROWS,
    MATMUL_F32,
    NBITS4,
    NBITS8,
    PREFILL_INT8,
    QDQ_INT8,
    PartCost,
)

GB = 1e9
# Bytes read per decode step per byte on disk (see the module docstring).
DECODE_BYTES: dict[str, Mapping[str, float]] = {
    # INT8_ROWS: Qwen2.5-1.5B w8a8 decodes as fast as int4 with 1.8x its bytes (2 threads)
    "ort_cpu": {MATMUL_F32: 1.0, NBITS4: 1.7, NBITS8: 1.3, INT8_ROWS: 1.0, QDQ_INT8: 1.0},
    "openvino": {MATMUL_F32: 1.0, NBITS4: 1.9, NBITS8: 1.9, INT8_ROWS: 1.0, QDQ_INT8: 1.0},
    # the streamed backend: numpy's BLAS for float weights, our llvmlite kernel for NBits; int8
    # rows are widened to a float32 copy per step (4 bytes touched per byte read)
    "streamed": {MATMUL_F32: 1.0, NBITS4: 1.7, NBITS8: 1.3, INT8_ROWS: 4.0, QDQ_INT8: 1.0},
}
GENERIC_DECODE_BYTES = {MATMUL_F32: 1.0, NBITS4: 1.0, NBITS8: 1.0, INT8_ROWS: 1.0, QDQ_INT8: 1.0}
# A prompt's matmul rate as a fraction of the device's fp32 GEMM rate (x efficiency), by class.
PREFILL_RATE: dict[str, Mapping[str, float]] = {
    "ort_cpu": {
        MATMUL_F32: 1.1,
        NBITS4: 0.9,
        NBITS8: 0.9,
        PREFILL_INT8: 2.2,
        INT8_ROWS: 2.2,
        QDQ_INT8: 1.0,
    },
    "openvino": {MATMUL_F32: 1.0, NBITS4: 0.7, NBITS8: 0.7, INT8_ROWS: 1.0, QDQ_INT8: 1.0},
    "streamed": {MATMUL_F32: 1.0, NBITS4: 0.35, NBITS8: 0.35, INT8_ROWS: 0.5, QDQ_INT8: 1.0},
}
GENERIC_PREFILL_RATE = {MATMUL_F32: 1.0, NBITS4: 1.0, NBITS8: 1.0, INT8_ROWS: 1.0, QDQ_INT8: 1.0}
# Per block per step: attention, norms, rope, the runtime's dispatch of ~20 small ops.
BLOCK_OVERHEAD_S = {"ort_cpu": 15e-6, "openvino": 40e-6, "streamed": 250e-6}
GENERIC_BLOCK_OVERHEAD_S = 50e-6
# Handing activations from one runtime to the next on shared memory: their thread pools wake
# (the engine turns spinning off when runtimes share cores).
BOUNDARY_S = 100e-6


def _bandwidth(profile: DeviceProfile) -> float:
    return profile.memory_bandwidth_gbs * GB * profile.efficiency  # type: ignore[operator]


def _compute_rate(profile: DeviceProfile, integer: bool) -> float:
    """FLOP/s (or OP/s) a kernel reaches; int-only devices (NPUs) compute in int8."""
    rate = profile.int8_gops if integer or profile.fp32_gflops == 0 else profile.fp32_gflops
    return rate * GB * profile.efficiency  # type: ignore[operator]


def decode_seconds(part: PartCost, profile: DeviceProfile, runtime: str, context: int) -> float:
    """One decode step of `part` with `context` positions cached."""
    factors = DECODE_BYTES.get(runtime, GENERIC_DECODE_BYTES)
    read = sum(nbytes * factors.get(cls, 0.0) for cls, nbytes in part.class_bytes.items())
    flops = part.flops_per_token + part.attention_flops_per_context_token * context
    integer = part.static_int8 or profile.needs_int8
    seconds = max(read / _bandwidth(profile), flops / _compute_rate(profile, integer))
    if part.kind == "block":
        seconds += BLOCK_OVERHEAD_S.get(runtime, GENERIC_BLOCK_OVERHEAD_S)
    return seconds


def prefill_seconds(
    part: PartCost,
    profile: DeviceProfile,
    runtime: str,
    tokens: int,
    chunk: int,
    int8_prefill: bool,
) -> float:
    """A prompt of `tokens` in steps of `chunk`. The head computes the last position only
    (unless its graph computes every position: standard-op static graphs); attention over the
    growing prompt is counted at its mean length."""
    if part.kind == "embed":
        return 0.0
    rates = PREFILL_RATE.get(runtime, GENERIC_PREFILL_RATE)
    steps = -(-tokens // chunk)
    if part.kind == "head" and not part.logits_every_position:  # one position's logits a step
        return decode_seconds(part, profile, runtime, tokens) * steps
    weight_classes = [c for c in part.class_bytes if c in rates]
    if int8_prefill and part.has_prefill_graph and PREFILL_INT8 in rates:
        cls = PREFILL_INT8
    else:
        cls = max(weight_classes, key=lambda c: part.class_bytes[c], default=MATMUL_F32)
    integer = part.static_int8 or profile.needs_int8
    rate = _compute_rate(profile, integer) * (1.0 if integer else rates.get(cls, 1.0))
    flops = tokens * (part.flops_per_token + part.attention_flops_per_context_token * tokens / 2)
    # A prompt step also reads the weights once; small chunks become memory-bound.
    read = decode_seconds(part, profile, runtime, tokens // 2) * steps
    return max(flops / rate, read) + steps * BLOCK_OVERHEAD_S.get(runtime, GENERIC_BLOCK_OVERHEAD_S)


def transfer_seconds(tokens: int, hidden_bytes: int, link_gbs: float | None) -> float:
    """Activations over a segment boundary: a copy over the host link, or (shared memory)
    only the hand-over between runtimes."""
    if link_gbs is None:
        return BOUNDARY_S
    return BOUNDARY_S + tokens * hidden_bytes / (link_gbs * GB)
