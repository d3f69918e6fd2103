"""Times llama.cpp (llama-cpp-python) on given token ids; runs in the benchmark's own venv.

    python bench/llama_cpp_runner.py MODEL.gguf --threads 2 --gen 128 < prompt_ids.json

Reads a JSON list of prompt token ids on stdin, prints one JSON line: prefill and decode
tokens/s and the greedy tokens (so the caller can check both engines saw the same prompt).
Not a project module: llama-cpp-python is deliberately not an edge dependency.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
from llama_cpp import Llama


def last_logits(llm: Llama) -> np.ndarray:
    """The newest position's logits, read in place (llama-cpp-python keeps no copy unless
    logits_all is set, and a copy per token would be charged to llama.cpp's decode time)."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def window_nll(args: argparse.Namespace, windows: list[list[int]]) -> dict:
    """Summed NLL of every window's tokens after its first, each window from an empty cache."""
    longest = max(len(w) for w in windows)
    llm = Llama(
        args.model,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=max(512, longest),
        n_batch=max(512, longest),
        logits_all=True,
        verbose=False,
    )
    total, count = 0.0, 0
    for window in windows:
        llm.reset()
        llm.eval(window)
        scores = np.asarray(llm.scores[: len(window)], dtype=np.float64)
        peak = scores.max(axis=1, keepdims=True)
        lse = np.log(np.exp(scores - peak).sum(axis=1)) + peak[:, 0]
        total -= float((scores[np.arange(len(window) - 1), window[1:]] - lse[:-1]).sum())
        count += len(window) - 1
    return {"nll_sum": total, "tokens": count}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--logits",
        action="store_true",
        help="perplexity mode: stdin holds a list of windows of token ids; "
        "prints the summed negative log-likelihood",
    )
    args = parser.parse_args()
    prompt = json.load(sys.stdin)
    if args.logits:
        print(json.dumps(window_nll(args, prompt)))
        return
    llm = Llama(
        args.model,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_ctx=max(512, len(prompt) + args.gen + 8),
        n_batch=512,
        verbose=False,
    )
    for _ in range(args.runs):
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill = time.perf_counter() - start
        tokens = []
        start = time.perf_counter()
        for _ in range(args.gen):
            token = int(np.argmax(last_logits(llm)))
            tokens.append(token)
            llm.eval([token])
        decode = time.perf_counter() - start
        print(
            json.dumps(
                {
                    "prefill_tps": len(prompt) / prefill,
                    "decode_tps": args.gen / decode,
                    "tokens": tokens,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
