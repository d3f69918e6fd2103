"""The streamed kernel's two activation formats, side by side on real models' block shapes.

    python bench/bench_int16.py [--threads 2] [--rounds 15] [--m 1 8 64] [--total-mib 256]
    python bench/bench_int16.py --decode PACKAGE [PACKAGE ...] [--tokens 32] [--rounds 5]

One block's four projections (fused QKV, attention output, fused gate/up, down; int4, block 32,
symmetric, as `edge export --quant int4` writes them) run in forward order, on copies of the
block totalling `--total-mib` (so weights come from DRAM, as a streamed or resident decode pass
reads them). `fp32` and `int16` activations alternate round by round on the same copies, so
load from other processes hits both alike.

`--decode`: whole-model greedy decode of an int4 package on the streamed path's forward (the
numpy forward with every linear on `NBitsMatMul`, all weights resident), one model per
activation format sharing the weights, alternating run by run; tokens/s medians and whether
the two produce the same tokens.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from devices.kernels import NBitsMatMul, NBitsSpec, int16_supported
from quant import WeightQuantConfig, quantize

# name -> (hidden, intermediate, q heads, kv heads, head dim)
MODELS = {
    "SmolLM2-135M": (576, 1536, 9, 3, 64),
    "Qwen2.5-0.5B": (896, 4864, 14, 2, 64),
    "Qwen2.5-1.5B": (1536, 8960, 12, 2, 128),
}


def block_shapes(h: int, f: int, heads: int, kv: int, d: int) -> list[tuple[int, int]]:
    """(K, N) of qkv, attn_output, gate_up, down."""
    return [(h, (heads + 2 * kv) * d), (heads * d, h), (h, 2 * f), (f, h)]


def bench_model(name: str, args: argparse.Namespace) -> list[str]:
    rng = np.random.default_rng(0)
    shapes = block_shapes(*MODELS[name])
    weights = [
        quantize(rng.standard_normal((K, N)).astype(np.float32) * 0.02, WeightQuantConfig())
        for K, N in shapes
    ]
    block_bytes = sum(q.nbytes for q in weights)
    copies = max(2, -(-args.total_mib * 2**20 // block_bytes))
    blocks = [[(q.packed.copy(), q.scales.copy()) for q in weights] for _ in range(copies)]
    kinds = ["fp32", "int16"]
    kernels = {
        kind: [NBitsMatMul(NBitsSpec.of(q), args.threads, activations=kind) for q in weights]
        for kind in kinds
    }
    rows = []
    for M in args.m:
        xs = [rng.standard_normal((M, K)).astype(np.float32) for K, _ in shapes]

        def one_pass(kind: str, xs: list[np.ndarray] = xs) -> float:
            """Seconds per block: every copy's four projections, in order."""
            start = time.perf_counter()
            for block in blocks:
                for kernel, x, (packed, scales) in zip(kernels[kind], xs, block, strict=True):
                    kernel(x, packed, scales)
            return (time.perf_counter() - start) / len(blocks)

        for kind in kinds:  # warm: compiled, pages touched, pool threads up
            one_pass(kind)
        samples: dict[str, list[float]] = {kind: [] for kind in kinds}
        for _ in range(args.rounds):
            for kind in kinds:
                samples[kind].append(one_pass(kind))
        fp32, int16 = (statistics.median(samples[k]) for k in kinds)
        fp32_best, int16_best = (min(samples[k]) for k in kinds)
        rows.append(
            f"| {name} | {M} | {fp32 * 1e6:.0f} / {fp32_best * 1e6:.0f} | "
            f"{int16 * 1e6:.0f} / {int16_best * 1e6:.0f} | {fp32 / int16:.2f}x |"
        )
        print(rows[-1], flush=True)
    return rows


class KernelLinear:
    """The streamed engine's linear for block-quantized weights, with a chosen x format."""

    def __init__(self, threads: int, activations: str) -> None:
        self.threads, self.activations = threads, activations
        self.kernels: dict[NBitsSpec, NBitsMatMul] = {}

    def __call__(self, x: np.ndarray, weight: object) -> np.ndarray:
        spec = NBitsSpec.of(weight)
        kernel = self.kernels.get(spec)
        if kernel is None:
            kernel = NBitsMatMul(spec, self.threads, activations=self.activations)
            self.kernels[spec] = kernel
        return kernel(
            np.ascontiguousarray(x, np.float32),
            weight.packed,  # type: ignore[attr-defined]
            weight.scales,  # type: ignore[attr-defined]
            weight.zero_points,  # type: ignore[attr-defined]
        )


def bench_decode(package_dir: str, args: argparse.Namespace) -> str:
    from devices.spec_forward.numpy_forward import ForwardConfig, NumpyForward
    from devices.spec_forward.weights import load_model_weights
    from edge.package import open_package

    weights = load_model_weights(open_package(package_dir))
    models = {
        kind: NumpyForward(weights, ForwardConfig(256), KernelLinear(args.threads, kind))
        for kind in ("fp32", "int16")
    }
    prompt = list(range(100, 116))

    def run(model: NumpyForward) -> tuple[float, list[int]]:
        model.reset()
        token = int(model.prefill(prompt)[0].argmax())
        tokens = [token]
        start = time.perf_counter()
        for _ in range(args.tokens):
            token = int(model.decode(token).argmax())
            tokens.append(token)
        return args.tokens / (time.perf_counter() - start), tokens

    for model in models.values():  # warm: compiled kernels, touched weights
        run(model)
    rates: dict[str, list[float]] = {kind: [] for kind in models}
    outputs = {}
    for _ in range(args.rounds):
        for kind, model in models.items():
            rate, outputs[kind] = run(model)
            rates[kind].append(rate)
    fp32, int16 = (statistics.median(rates[k]) for k in models)
    same = sum(a == b for a, b in zip(outputs["fp32"], outputs["int16"], strict=True))
    return (
        f"| {package_dir} | {fp32:.2f} | {int16:.2f} | {int16 / fp32:.2f}x | "
        f"{same}/{len(outputs['fp32'])} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--m", type=int, nargs="+", default=[1, 8, 64])
    parser.add_argument("--total-mib", type=int, default=256)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--decode", nargs="+", metavar="PACKAGE")
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    if not int16_supported():
        raise SystemExit("this CPU has no AVX-512 VNNI: the int16 path does not run here")
    if args.decode:
        print(
            "| int4 package (numpy forward + NBitsMatMul) | fp32 x tok/s | int16 x tok/s | "
            "int16 / fp32 | same greedy tokens |\n|---|---|---|---|---|"
        )
        for package_dir in args.decode:
            print(bench_decode(package_dir, args), flush=True)
        return
    header = [
        "| model (one block, 4 projections) | M | fp32 x µs median / best | "
        "int16 x µs median / best | fp32 / int16 |",
        "|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows = [row for name in args.models for row in bench_model(name, args)]
    print("\n".join(header + rows))


if __name__ == "__main__":
    main()
