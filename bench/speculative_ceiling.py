"""How fast speculative decoding could possibly be on this machine, from measured parts.

    python bench/speculative_ceiling.py --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b

Measures, in one run: the target's cost of one pass over S = 1..16 tokens (verification), the
draft model's cost per drafted token, the target's greedy answers to the bench prompts
(`edge.bench.SPECULATIVE_PROMPTS`, EOS ignored as in bench_speculative.py), and how often the
draft's greedy choice equals the target's next token along those answers (teacher-forced).
Then prints upper bounds on the speedup over plain decoding:

- any draft that is always right and free: max over k of (k + 1) / cost(k + 1);
- the draft model at its measured agreement, drafting then verifying (sequential), and with
  drafting entirely hidden on another device (perfect overlap, PEARL/Dovetail's best case);
- prompt lookup with hindsight: every round proposes exactly the tokens that will be accepted
  (the longest continuation of any earlier occurrence of the text's suffix), so rounds cost
  only the verification of what is kept.

A bound below a goal means no scheduling, k choice or overlap reaches that goal with these
models on this machine; the measured results in bench_speculative.py sit under these bounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from edge.bench import SPECULATIVE_PROMPTS
from edge.engine import Engine, EngineConfig
from edge.package import open_package
from edge.resolve import resolve_package
from edge.tokenizer import Tokenizer


def verify_costs(engine: Engine, prompt: list[int], sizes: range, repeats: int) -> dict[int, float]:
    """Seconds of one target pass over S tokens after `prompt`, median of `repeats`."""
    engine.reset()
    engine.prefill(prompt)
    base = engine.position
    costs = {}
    for size in sizes:
        times = []
        for _ in range(repeats):
            engine.rewind(base)
            start = time.perf_counter()
            if size == 1:
                engine.decode(prompt[-1])
            else:
                engine.verify(prompt[-size:])
            times.append(time.perf_counter() - start)
        costs[size] = statistics.median(times)
    engine.rewind(base)
    return costs


def greedy_answer(engine: Engine, prompt: list[int], tokens: int) -> list[int]:
    engine.reset()
    logits = engine.prefill(prompt)
    out = [int(np.argmax(logits.reshape(-1, logits.shape[-1])[-1]))]
    while len(out) < tokens:
        logits = engine.decode(out[-1])
        out.append(int(np.argmax(logits.reshape(-1, logits.shape[-1])[-1])))
    return out


def agreement(draft: Engine, prompt: list[int], answer: list[int]) -> float:
    """Share of answer positions where the draft's greedy choice is the target's token."""
    draft.reset()
    logits = draft.prefill(prompt + answer[:-1], all_logits=True)
    choices = np.argmax(logits[len(prompt) - 1 :], axis=-1)
    return float(np.mean(choices == np.asarray(answer)))


def lookup_with_hindsight(prompt: list[int], answer: list[int]) -> list[int]:
    """Tokens accepted per round when each round proposes the longest continuation, over all
    earlier occurrences of any suffix of the text, that matches what comes next."""
    accepted = []
    i = 0
    while i < len(answer):
        seen = prompt + answer[:i]
        best = 0
        for n in range(1, min(8, len(seen) - 1) + 1):
            suffix = seen[-n:]
            for j in range(len(seen) - n):
                if seen[j : j + n] == suffix:
                    run = 0
                    while (
                        i + run < len(answer)
                        and j + n + run < len(seen)
                        and seen[j + n + run] == answer[i + run]
                    ):
                        run += 1
                    best = max(best, run)
        accepted.append(best)
        i += best + 1
    return accepted


def expected_tokens(a: float, k: int) -> float:
    return k + 1.0 if a >= 1 else (1 - a ** (k + 1)) / (1 - a)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    target_pkg = open_package(resolve_package(args.target))
    tokenizer = Tokenizer.from_package(target_pkg)
    target = Engine(target_pkg, EngineConfig(threads=args.threads, max_context=2048))
    draft = Engine(
        open_package(resolve_package(args.draft)),
        EngineConfig(threads=args.threads, max_context=2048),
    )

    prompts = {
        kind: [
            tokenizer.encode(
                tokenizer.apply_chat_template([{"role": "user", "content": text}]),
                add_special_tokens=False,
            )
            for text in texts
        ]
        for kind, texts in SPECULATIVE_PROMPTS.items()
    }
    first = prompts["code"][0]
    cost = verify_costs(target, first, range(1, 17), args.repeats)
    step = cost[1]
    draft_cost = verify_costs(draft, first, range(1, 2), args.repeats)[1]
    print(
        f"target pass over S tokens / one decode step ({step * 1e3:.1f} ms), "
        f"{args.threads} threads:"
    )
    print("| S | " + " | ".join(str(s) for s in cost) + " |")
    print("|---|" + "---|" * len(cost))
    print("| cost | " + " | ".join(f"{c / step:.2f}" for c in cost.values()) + " |")
    print(f"\ndraft token: {draft_cost * 1e3:.1f} ms = {draft_cost / step:.2f} target steps\n")

    free_perfect = max((k + 1) / (cost[k + 1] / step) for k in range(1, 16))
    print(
        "| prompts | draft agreement | draft model, sequential | draft model, hidden "
        "(overlap) | lookup with hindsight | always-right free draft |"
    )
    print("|---|---|---|---|---|---|")
    for kind, ids_list in prompts.items():
        alphas, sequential, hidden, lookup = [], [], [], []
        for ids in ids_list:
            answer = greedy_answer(target, ids, args.tokens)
            a = agreement(draft, ids, answer)
            alphas.append(a)
            sequential.append(
                max(
                    expected_tokens(a, k) / (k * draft_cost / step + cost[k + 1] / step)
                    for k in range(1, 16)
                )
            )
            hidden.append(max(expected_tokens(a, k) / (cost[k + 1] / step) for k in range(1, 16)))
            rounds = lookup_with_hindsight(ids, answer)
            spent = sum(cost[min(n, 15) + 1] / step if n else 1.0 for n in rounds)
            lookup.append(len(answer) / spent)
        print(
            f"| {kind} | {statistics.mean(alphas):.0%} | {statistics.mean(sequential):.2f}x | "
            f"{statistics.mean(hidden):.2f}x | {statistics.mean(lookup):.2f}x | "
            f"{free_perfect:.2f}x |"
        )


if __name__ == "__main__":
    main()
