"""edge vs transformers, fp32, same weights, side by side in one run (issue: the trunk).

    python bench/bench_fp32.py [--model smollm2-135m] [--threads 2] [--runs 5]

Both engines get the same 128-token prompt (CPython's documentation) and decode 128 greedy
tokens; runs alternate between the two so machine noise hits both alike. Prints medians and
the edge/transformers ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def bench_transformers(gguf, prompt: list[int], gen: int) -> tuple[float, float]:
    import torch

    model, _ = _reference(gguf)
    ids = torch.tensor([prompt])
    with torch.inference_mode():
        start = time.perf_counter()
        out = model(ids, use_cache=True)
        prefill = time.perf_counter() - start
        cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(gen):
            out = model(token, past_key_values=cache, use_cache=True)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        decode = time.perf_counter() - start
    return len(prompt) / prefill, gen / decode


_REF = {}


def _reference(gguf):
    if gguf not in _REF:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kwargs = {"gguf_file": gguf.name}
        _REF[gguf] = (
            AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs).eval(),
            AutoTokenizer.from_pretrained(gguf.parent, **kwargs),
        )
    return _REF[gguf]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--gen-tokens", type=int, default=128)
    args = parser.parse_args()

    import torch

    import edge
    from edge.bench import BenchConfig, bench_engine, bench_prompt
    from edge.models.pull import pull

    torch.set_num_threads(args.threads)
    gguf = pull(args.model, progress=False)
    model = edge.load(args.model, threads=args.threads, progress=False)
    prompt = bench_prompt(model.tokenizer, args.prompt_tokens)
    one = BenchConfig(args.prompt_tokens, args.gen_tokens, runs=1, warmup=0)
    bench_engine(model.engine, prompt, one)  # warm up both
    bench_transformers(gguf, prompt, 8)
    rows = {"edge": ([], []), "transformers": ([], [])}
    for _ in range(args.runs):
        r = bench_engine(model.engine, prompt, one)
        rows["edge"][0].append(r.prefill_tps[0])
        rows["edge"][1].append(r.decode_tps[0])
        p, d = bench_transformers(gguf, prompt, args.gen_tokens)
        rows["transformers"][0].append(p)
        rows["transformers"][1].append(d)
    med = {k: (statistics.median(v[0]), statistics.median(v[1])) for k, v in rows.items()}
    print(
        f"{args.model} fp32, {args.threads} threads, {args.prompt_tokens}-token prompt, "
        f"{args.gen_tokens} decoded tokens, median of {args.runs} alternating runs"
    )
    print("| engine | prefill tok/s | decode tok/s |")
    print("|---|---|---|")
    for name, (p, d) in med.items():
        print(f"| {name} | {p:.1f} | {d:.1f} |")
    e, t = med["edge"], med["transformers"]
    print(f"| edge / transformers | {e[0] / t[0]:.2f}x | {e[1] / t[1]:.2f}x |")


if __name__ == "__main__":
    main()
