"""Times llama.cpp (llama-cpp-python) on given token ids; runs in the benchmark's own venv.

    python bench/llama_cpp_runner.py MODEL.gguf --threads 2 --gen 128 < prompt_ids.json
    python bench/llama_cpp_runner.py A.gguf B.gguf --serve --threads 2 --n-ctx 512

Reads a JSON list of prompt token ids on stdin, prints one JSON line: prefill and decode
tokens/s and the greedy tokens (so the caller can check both engines saw the same prompt).

`--serve` keeps llama.cpp warm, as edge is in the caller's process: every GGUF is loaded once,
then prints `{"ready": ..., "models": [...]}` and answers each JSON-line command on stdin,
`{"model": i, "ids": [...], "gen": N}`, with one JSON line: prefill and decode seconds and the
greedy tokens (bench/bench_decode.py drives it). `"lookup": K` decodes through
llama-cpp-python's prompt-lookup speculative decoding instead (`LlamaPromptLookupDecoding`, K
tokens drafted a pass, `Llama.generate` at temperature 0: greedy), on a second instance of
the model loaded on first use with the `logits_all` that mode needs; `"lookup": 0` takes the
same `generate` path without a draft, so the two differ by the drafts alone
(bench/bench_speculative.py --llama-python drives them). Not a project module: llama-cpp-python is
deliberately not an edge dependency.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
from llama_cpp import Llama


def last_logits(llm: Llama) -> np.ndarray:
    """The newest position's logits, read in place (llama-cpp-python keeps no copy unless
    logits_all is set, and a copy per token would be charged to llama.cpp's decode time)."""
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))


def greedy(llm: Llama, ids: list[int], gen: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode seconds, greedy tokens) from an empty cache: argmax in the
    loop on logits read in place, as edge's bench_engine does."""
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - start
    tokens = []
    start = time.perf_counter()
    for _ in range(gen):
        token = int(np.argmax(last_logits(llm)))
        tokens.append(token)
        llm.eval([token])
    return prefill, time.perf_counter() - start, tokens


def load(path: str, threads: int, n_ctx: int, **extra: object) -> Llama:
    return Llama(
        path,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=n_ctx,
        n_batch=512,
        verbose=False,
        **extra,
    )


def generated(llm: Llama, ids: list[int], gen: int) -> tuple[float, float, list[int]]:
    """(prefill seconds, decode seconds, tokens) through `Llama.generate` at temperature 0:
    `gen` tokens, drafts and all, timed after the first (as edge's `max_tokens`)."""
    llm.reset()
    start = time.perf_counter()
    tokens: list[int] = []
    prefill = first = 0.0
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        if not tokens:
            first = time.perf_counter()
            prefill = first - start
        tokens.append(int(token))
        if len(tokens) >= gen:
            break
    return prefill, time.perf_counter() - first, tokens


def lookup_model(path: str, args: argparse.Namespace, k: int) -> Llama:
    """The model with prompt-lookup drafts of `k` tokens (0: none, the same decoding path)."""
    from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

    draft = LlamaPromptLookupDecoding(num_pred_tokens=k) if k else None
    return load(path, args.threads, args.n_ctx, logits_all=True, draft_model=draft)


def serve(args: argparse.Namespace) -> None:
    """Load every model once, then answer JSON-line commands until stdin closes."""
    models, info = [], []
    for path in args.model:
        start = time.perf_counter()
        llm = load(path, args.threads, args.n_ctx)
        models.append(llm)
        info.append({"path": path, "n_vocab": llm.n_vocab(), "load_s": time.perf_counter() - start})
    print(json.dumps({"ready": True, "pid": os.getpid(), "models": info}), flush=True)
    lookups: dict[tuple[int, int], Llama] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        llm = models[command["model"]]
        ids, gen, lookup = command["ids"], command["gen"], command.get("lookup")
        if len(ids) + gen + 16 > llm.n_ctx():
            reply = {"error": f"{len(ids)} + {gen} tokens exceed n_ctx={llm.n_ctx()}"}
        elif lookup is None:
            prefill, decode, tokens = greedy(llm, ids, gen)
            reply = {"prefill_s": prefill, "decode_s": decode, "tokens": tokens}
        else:
            key = (command["model"], int(lookup))
            if key not in lookups:
                lookups[key] = lookup_model(args.model[key[0]], args, key[1])
            prefill, decode, tokens = generated(lookups[key], ids, gen)
            reply = {"prefill_s": prefill, "decode_s": decode, "tokens": tokens}
        print(json.dumps(reply), flush=True)


def window_nll(args: argparse.Namespace, windows: list[list[int]]) -> dict:
    """Summed NLL of every window's tokens after its first, each window from an empty cache."""
    longest = max(len(w) for w in windows)
    llm = Llama(
        args.model[0],
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
    parser.add_argument("model", nargs="+", help="GGUF file(s); more than one only with --serve")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument(
        "--logits",
        action="store_true",
        help="perplexity mode: stdin holds a list of windows of token ids; "
        "prints the summed negative log-likelihood",
    )
    parser.add_argument(
        "--serve",
        action="store_true",
        help="load every model once, then answer JSON-line commands on stdin",
    )
    parser.add_argument("--n-ctx", type=int, default=1024, help="context size in --serve mode")
    args = parser.parse_args()
    if args.serve:
        serve(args)
        return
    if len(args.model) != 1:
        parser.error("give one model, or --serve")
    prompt = json.load(sys.stdin)
    if args.logits:
        print(json.dumps(window_nll(args, prompt)))
        return
    llm = load(args.model[0], args.threads, max(512, len(prompt) + args.gen + 8))
    for _ in range(args.runs):
        prefill, decode, tokens = greedy(llm, prompt, args.gen)
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
