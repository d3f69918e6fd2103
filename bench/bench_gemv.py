"""Streamed-weight GEMV: edge's JIT `MatMulNBits` kernel vs ONNX Runtime, weights from DRAM.

    python bench/bench_gemv.py [--threads 2] [--k 2048] [--n 8192] [--block-size 32]
                               [--total-mib 512] [--rounds 5] [--m 1 8]

One [K, N] weight (int4, block 32, symmetric: no zero points) is copied until the copies exceed
`--total-mib` (the last-level cache here is ~96 MB per thread), and every variant rotates over
its copies, so each GEMV reads its weights from DRAM. Variants:

- `edge jit int4`: `devices.kernels.NBitsMatMul`, weights read in place from numpy buffers;
  fp32 x (ORT's accuracy_level 0 math) and, where the CPU has AVX-512 VNNI, int16 x (x rounded
  to 15 bits per block, int8 dot products).
- `ORT MatMulNBits init`: weights as initializers, pre-packed, accuracy_level 4 (int8 x).
- `ORT MatMulNBits inputs`: the same op with weights as graph inputs (no pre-packing).
- `ORT DynamicQuantizeMatMul`: int8 weights (per-column scales) as graph inputs.
- `ORT MatMul fp32`: fp32 weights as graph inputs.

GB/s counts the variant's weight bytes (int4: packed codes + scales + zero points); the last
column divides it by `devices.bandwidth.measure_read_bandwidth(threads)` measured in the same
run, before and after the kernels (the larger is used). Times are medians and minimums over
rounds; GB/s uses the minimum, since other processes only ever slow a pass down. ORT
sessions run with `session.intra_op.allow_spinning=0`: with one session per weight copy, the
spinning thread pools of idle sessions would otherwise steal the cores from the running one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

from devices.bandwidth import measure_read_bandwidth
from devices.kernels import NBitsMatMul, NBitsSpec, int16_supported
from quant import QuantizedWeight, WeightQuantConfig, matmul_nbits_model, quantize
from quant.matmul_nbits import MS_DOMAIN

_OPSETS = [helper.make_opsetid("", 21), helper.make_opsetid(MS_DOMAIN, 1)]


@dataclass(frozen=True)
class Result:
    name: str
    M: int
    median: float  # seconds per GEMV
    best: float
    weight_bytes: int

    @property
    def gbps(self) -> float:
        """From the best pass: other processes only ever slow a pass down."""
        return self.weight_bytes / self.best / 1e9


def timed(calls: list[Callable[[], object]], rounds: int) -> tuple[float, float]:
    """(median, best) seconds per call over `rounds` passes through all calls, after one
    warm-up pass."""
    for call in calls:
        call()
    passes = []
    for _ in range(rounds):
        start = time.perf_counter()
        for call in calls:
            call()
        passes.append((time.perf_counter() - start) / len(calls))
    return statistics.median(passes), min(passes)


def session(model, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Dozens of sessions take turns: spinning pools of idle sessions would steal the cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        model.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )


def graph(node, inputs: list, K: int, N: int):
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["M", N])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["M", K])
    return helper.make_model(
        helper.make_graph([node], "bench", [x, *inputs], [out]), opset_imports=_OPSETS
    )


def nbits_inputs_model(q: QuantizedWeight):
    """MatMulNBits with B and scales as graph inputs (what a streamed block would feed)."""
    node = helper.make_node(
        "MatMulNBits",
        ["x", "B", "scales"],
        ["y"],
        domain=MS_DOMAIN,
        K=q.K,
        N=q.N,
        bits=q.bits,
        block_size=q.block_size,
        accuracy_level=4,
    )
    inputs = [
        helper.make_tensor_value_info("B", TensorProto.UINT8, list(q.packed.shape)),
        helper.make_tensor_value_info("scales", TensorProto.FLOAT, [q.scales.size]),
    ]
    return graph(node, inputs, q.K, q.N)


def dynamic_int8_model(K: int, N: int):
    node = helper.make_node("DynamicQuantizeMatMul", ["x", "B", "b_scale"], ["y"], domain=MS_DOMAIN)
    inputs = [
        helper.make_tensor_value_info("B", TensorProto.INT8, [K, N]),
        helper.make_tensor_value_info("b_scale", TensorProto.FLOAT, [N]),
    ]
    return graph(node, inputs, K, N)


def fp32_model(K: int, N: int):
    node = helper.make_node("MatMul", ["x", "W"], ["y"])
    return graph(node, [helper.make_tensor_value_info("W", TensorProto.FLOAT, [K, N])], K, N)


def copies_for(nbytes: int, total_bytes: int) -> int:
    return max(2, -(-total_bytes // nbytes))


def run_all(args: argparse.Namespace) -> tuple[list[Result], list[float]]:
    K, N, threads, total = args.k, args.n, args.threads, args.total_mib * 2**20
    rng = np.random.default_rng(0)
    w = rng.standard_normal((K, N)).astype(np.float32)
    q = quantize(w, WeightQuantConfig(bits=4, block_size=args.block_size))
    int4_bytes = q.nbytes
    bandwidth = [measure_read_bandwidth(threads)]
    copies = copies_for(int4_bytes, total)
    weights = [(q.packed.copy(), q.scales.copy()) for _ in range(copies)]
    kernels = {"fp32": NBitsMatMul(NBitsSpec.of(q), threads=threads, activations="fp32")}
    if int16_supported():
        kernels["int16"] = NBitsMatMul(NBitsSpec.of(q), threads=threads, activations="int16")
    init_sessions = [session(matmul_nbits_model(q, 4), threads) for _ in range(copies)]
    inputs_session = session(nbits_inputs_model(q), threads)
    int8 = np.clip(np.rint(w / np.abs(w).max(0) * 127), -127, 127).astype(np.int8)
    int8_scales = (np.abs(w).max(0) / 127).astype(np.float32)
    int8_weights = [int8.copy() for _ in range(copies_for(int8.nbytes, total))]
    int8_session = session(dynamic_int8_model(K, N), threads)
    fp32_weights = [w.copy() for _ in range(copies_for(w.nbytes, total))]
    fp32_session = session(fp32_model(K, N), threads)
    results = []
    for M in args.m:
        x = rng.standard_normal((M, K)).astype(np.float32)
        out = np.empty((M, N), np.float32)
        variants = [
            (
                f"edge jit int4, {kind} x (weights in place)",
                int4_bytes,
                args.rounds,
                [partial(kernel, x, p, s, None, out) for p, s in weights],
            )
            for kind, kernel in kernels.items()
        ] + [
            (
                "ORT MatMulNBits int4, initializers (acc 4)",
                int4_bytes,
                args.rounds,
                [partial(s.run, None, {"x": x}) for s in init_sessions],
            ),
            (
                "ORT MatMulNBits int4, graph inputs (acc 4)",
                int4_bytes,
                1,
                [
                    partial(inputs_session.run, None, {"x": x, "B": p, "scales": s})
                    for p, s in weights[:3]
                ],
            ),
            (
                "ORT DynamicQuantizeMatMul int8, graph inputs",
                int8.nbytes + int8_scales.nbytes,
                args.rounds,
                [
                    partial(int8_session.run, None, {"x": x, "B": b, "b_scale": int8_scales})
                    for b in int8_weights
                ],
            ),
            (
                "ORT MatMul fp32, graph inputs",
                w.nbytes,
                args.rounds,
                [partial(fp32_session.run, None, {"x": x, "W": b}) for b in fp32_weights],
            ),
        ]
        for name, nbytes, rounds, calls in variants:
            results.append(Result(name, M, *timed(calls, rounds), nbytes))
            print(f"  {name} M={M}: {results[-1].median * 1e3:.3f} ms", flush=True)
    bandwidth.append(measure_read_bandwidth(threads))
    return results, bandwidth


def table(results: list[Result], bandwidth: float, threads: int) -> str:
    lines = [
        f"| kernel | M | ms median | ms best | GB/s of weights (best) | % of read BW "
        f"({threads} threads, {bandwidth:.1f} GB/s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.M} | {r.median * 1e3:.3f} | {r.best * 1e3:.3f} | "
            f"{r.gbps:.1f} | {100 * r.gbps / bandwidth:.0f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--k", type=int, default=2048)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--total-mib", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    load = os.getloadavg()[0]
    print(
        f"{args.k}x{args.n} int4 block {args.block_size}, {args.threads} threads, "
        f"load average at start {load:.2f} (other processes skew every number)",
        flush=True,
    )
    results, bandwidth = run_all(args)
    best = max(bandwidth)
    print(
        f"\nread bandwidth ({args.threads} threads): "
        + ", ".join(f"{b:.1f}" for b in bandwidth)
        + " GB/s (before, after)\n"
    )
    print(table(results, best, args.threads))


if __name__ == "__main__":
    main()
