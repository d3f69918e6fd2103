"""KL to float32 of the static int8 (NPU) packages, both op sets, on OpenVINO's CPU device.

    python bench/bench_static_kl.py [GGUF] [--windows 4] [--tokens 256] [--bits 8]
        [--attention-bits 16] [--chunks 1,64] [--context 512] [--ops contrib,standard]
        [--work DIR]

Exports GGUF (default: the shipped SmolLM2-135M-Instruct) to float32 and to `q-static-int8`
with `static_ops` "contrib" (GroupQueryAttention, SimplifiedLayerNormalization) and
"standard" (standard ONNX ops only), both calibrated alike; `--attention-bits` adds a
standard-op package whose attention products (queries, keys, values, probabilities) are
quantized at that width instead of `--bits` (16 with `--bits 8`: the mixed A8/A16 package,
row "standard+a16"). Then feeds `--windows` windows of `--tokens` consecutive tokens of the
held-out text (`edge.evaluate.default_corpus`), each from an empty cache, to each: through
the prompt graphs (chunks of the largest step, all logits) and, over each window's first 64
tokens, through the 1-token graphs. Reported per package and runtime: mean and max
KL(fp32 || static) over all positions in nats, and how often the argmax agrees with fp32's.
One window is noisy: 8-bit rounding turns 1e-6 float differences between runtimes (OpenVINO
and ONNX Runtime agree to 1e-5 on a block) into +-0.01 of mean KL.
Float32 runs on ONNX Runtime's CPU backend. OpenVINO gets INFERENCE_PRECISION_HINT f32. Its
CPU plugin drops 16-bit Q/DQ pairs (computes those activations in float), so the `openvino`
backend refuses such graphs: `--bits 16` reports ONNX Runtime alone, and the mixed package runs
on OpenVINO through `openvino-drop16` (below), which takes them: there its attention products
run in float, only its linear layers' 8-bit activations are quantized.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from devices.backend import YES, PackageSource, Support
from devices.backends.openvino_runtime import OpenVinoBackend
from edge.format import PartEntry

STEPPED = 64  # tokens fed one at a time through the 1-token graphs


class OpenVinoDrop16(OpenVinoBackend):
    """OpenVINO taking graphs with 16-bit Q/DQ, which `openvino` refuses because its CPU plugin
    drops those pairs: the mixed package's attention products then run in float there."""

    name = "openvino-drop16"

    def supports(self, part: PartEntry, package: PackageSource) -> Support:
        support = super().supports(part, package)
        return YES if not support and "drops 16-bit" in support.reason else support


def main() -> None:
    from edge.engine import Engine, EngineConfig
    from edge.evaluate import default_corpus, kl_per_position
    from edge.models.pull import pull
    from edge.package import open_package
    from edge.placement import Placement
    from edge.tokenizer import Tokenizer
    from exporters.export import ExportConfig, export

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gguf", nargs="?", default=None)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--bits", type=int, default=8, choices=(8, 16))
    parser.add_argument(
        "--attention-bits",
        type=int,
        default=None,
        choices=(8, 16),
        help="also measure a standard-op package with its attention products at these bits",
    )
    parser.add_argument("--chunks", default="1,64")
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--ops", default="contrib,standard", help="the op sets to measure")
    parser.add_argument(
        "--work", type=Path, default=None, help="where the packages go (default: edge's cache)"
    )
    args = parser.parse_args()
    gguf = Path(args.gguf) if args.gguf else pull("smollm2-135m", progress=False)
    chunks = tuple(int(c) for c in args.chunks.split(","))
    if args.work is None:
        from edge.paths import cache_dir

        args.work = cache_dir() / "bench" / "static_kl"
    args.work.mkdir(parents=True, exist_ok=True)

    def exported(name: str, config: ExportConfig) -> Path:
        out = args.work / name
        if not (out / "manifest.json").is_file():
            started = time.perf_counter()
            export(gguf, out, config, progress=False)
            print(f"exported {name} in {time.perf_counter() - started:.0f} s")
        return out

    fp32 = open_package(exported("fp32", ExportConfig(quant=None)), verify="sizes")
    text = Tokenizer.from_package(fp32).encode(default_corpus())
    windows = [text[w * args.tokens : (w + 1) * args.tokens] for w in range(args.windows)]
    assert len(windows[-1]) == args.tokens, f"the corpus has {len(text)} tokens"
    plain = Engine(fp32, EngineConfig(max_context=args.context, threads=2), progress=False)
    references = []
    for ids in windows:
        plain.reset()
        references.append(plain.prefill(ids, all_logits=True))
    from devices import registry

    registry.register(OpenVinoDrop16, replace=True)
    f32 = {"INFERENCE_PRECISION_HINT": "f32"}
    runtimes = {"ort_cpu": ("ort_cpu", {}), "openvino": ("openvino", f32)}
    if args.bits == 16:
        del runtimes["openvino"]
    print(
        f"{args.windows} x {args.tokens} tokens, A{args.bits}W8, chunks {chunks}, "
        f"context {args.context}"
    )
    # (row label, package folder, static_ops, the attention products' bits)
    packages = [(ops, f"a{args.bits}w8-{ops}", ops, None) for ops in args.ops.split(",")]
    if args.attention_bits not in (None, args.bits):
        a = args.attention_bits
        packages.append((f"standard+a{a}", f"a{args.bits}w8-standard-attn{a}", "standard", a))
    for label, folder, ops, attention_bits in packages:
        config = ExportConfig(
            quant="q-static-int8",
            static_chunks=chunks,
            static_context=args.context,
            static_activation_bits=args.bits,
            static_ops=ops,
            static_attention_bits=attention_bits,
        )
        package = open_package(exported(folder, config), verify="sizes")
        for runtime, (backend, options) in runtimes.items():
            if runtime == "openvino" and attention_bits == 16:
                backend = OpenVinoDrop16.name  # 16-bit attention Q/DQ dropped: float there
            placement = Placement.single(len(package.manifest.parts), backend, options)
            engine = Engine(package, EngineConfig(threads=2, placement=placement), progress=False)
            assert not engine.fallbacks, engine.fallbacks
            prompts, steps, seconds = [], [], 0.0
            for ids in windows:
                engine.reset()
                started = time.perf_counter()
                prompts.append(engine.prefill(ids, all_logits=True))
                seconds += time.perf_counter() - started
                engine.reset()
                steps.append(
                    np.stack(
                        [engine.prefill(ids[:1])[0]]
                        + [engine.decode(t).copy() for t in ids[1:STEPPED]]
                    )
                )
            for what, logits, ref in (
                (f"prompt ({seconds:.1f} s)", prompts, references),
                ("1-token", steps, [r[:STEPPED] for r in references]),
            ):
                per = kl_per_position(np.concatenate(ref), np.concatenate(logits))
                agree = float(
                    np.mean(np.concatenate(ref).argmax(-1) == np.concatenate(logits).argmax(-1))
                )
                print(
                    f"{label:12s} {backend:15s} {what:16s} KL mean {per.mean():.4f} "
                    f"max {per.max():.3f}  argmax agrees {agree:.0%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
