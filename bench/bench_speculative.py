"""Speculative decoding, side by side in one run: target alone vs draft model vs lookup vs both.

    python bench/bench_speculative.py --target qwen2.5-coder-1.5b --draft qwen2.5-coder-0.5b

Greedy, EOS ignored (`--eos` stops there instead), the same chat prompts for every
configuration (code prompts that quote the code to rewrite, open prose prompts;
`edge.bench.SPECULATIVE_PROMPTS`). Configurations run alternately per prompt so machine noise
hits all alike; medians per prompt kind, with each configuration's speedup over the target
alone and, for speculative ones, the acceptance rate and tokens committed per target pass.
`--baseline PKG` also decodes another package of the target model plainly in the same run (say
int4 next to a w8a8 target, whose multi-token passes are cheap but whose single steps are not
the fastest): the "vs baseline" column divides by its median instead of the target's.
Every speculative output is compared token for token with the target's own greedy output
(last column: runs identical over all tokens). With fp32 compute (fp32 packages,
`--accuracy-level 0`) they are identical; ONNX Runtime's int8 activations (`accuracy_level`
4) make a batched pass differ from a one-token pass by up to ~0.3 logits, so near-ties can
resolve differently.

`--tree N [N ...]` adds lookup token trees (several lookup continuations and the target's own
recycled candidates, verified in one pass; `SpeculativeConfig.tree`) of up to N nodes, the
target then loading with `EngineConfig(tree_verify=True)`; `--draft none` leaves the draft
model out (a target with no smaller sibling, SmolLM2):

    python bench/bench_speculative.py --target smollm2-135m --draft none --tree 8 16 32 \
        --baseline smollm2-135m

`--llama-python VENV/bin/python --gguf TARGET.gguf` adds llama.cpp on the same file as the
anchor (llama-cpp-python, warm in its own process, bench/llama_cpp_runner.py): decoding the
same token ids plainly and with its prompt-lookup speculative decoding
(`LlamaPromptLookupDecoding`, `--llama-lookup` tokens a pass, its own default 10), both
through `Llama.generate` at temperature 0; its "= target greedy" column compares its lookup
output with its own plain output.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass, field

from edge.bench import SPECULATIVE_PROMPTS
from edge.engine import EngineConfig
from edge.model import Model
from edge.package import open_package
from edge.resolve import resolve_package
from edge.speculative import (
    ChainedDraft,
    LookupDraft,
    ModelDraft,
    SpeculativeConfig,
    SpeculativeDecoder,
)
from edge.speculative.token_tree import TreeConfig

TREE_COMMITS = {None: "", True: ", exact commits", False: ", whole path"}


@dataclass
class Row:
    rates: dict[str, list[float]] = field(default_factory=dict)
    # per configuration: [drafted, accepted, committed tokens, target passes], summed over runs
    counts: dict[str, list[int]] = field(default_factory=dict)
    agreement: dict[str, list[int]] = field(default_factory=dict)
    lengths: list[int] = field(default_factory=list)  # the target's output length per prompt


def _agreement(out: list[int], reference: list[int]) -> int:
    """How many leading tokens equal the target's own greedy output."""
    n = 0
    while n < min(len(out), len(reference)) and out[n] == reference[n]:
        n += 1
    return n


def chat_ids(model: Model, text: str) -> list[int]:
    prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": text}])
    return model.tokenizer.encode(prompt, add_special_tokens=False)


def timed(model: Model, ids: list[int], tokens: int, eos: bool) -> tuple[list[int], float, object]:
    model.engine.reset()
    model._cached = []
    responses = model.stream(ids, max_tokens=tokens, ignore_eos=not eos)
    first = next(responses)
    out = [first.token]
    start = time.perf_counter()
    last = first
    for last in responses:
        out.append(last.token)
    return out, (len(out) - 1) / (time.perf_counter() - start), last.speculation


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--target", default="qwen2.5-coder-1.5b")
    parser.add_argument("--draft", default="qwen2.5-coder-0.5b", help="'none': no draft model")
    parser.add_argument(
        "--tree",
        type=int,
        nargs="*",
        default=[],
        metavar="N",
        help="also lookup token trees of up to N nodes (one configuration each)",
    )
    parser.add_argument(
        "--tree-whole",
        action="store_true",
        help="each tree both committing exactly and its whole kept path (TreeConfig(exact=True "
        "and False); without it, the default: exact unless the target rounds by step)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draft-threads", type=int, default=None)
    parser.add_argument(
        "--baseline",
        default=None,
        metavar="PKG",
        help="another package of the target model, decoded plainly alongside",
    )
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--llama-python", default=None, help="python with llama-cpp-python")
    parser.add_argument("--gguf", default=None, help="the target's GGUF, for llama.cpp")
    parser.add_argument("--llama-lookup", type=int, default=10, metavar="K")
    parser.add_argument(
        "--eos",
        action="store_true",
        help="stop each answer at its end of sequence (default: run past it)",
    )
    args = parser.parse_args()
    if bool(args.llama_python) != bool(args.gguf) or (args.llama_python and args.eos):
        parser.error("--llama-python and --gguf go together, and without --eos")

    # One target engine for every configuration, as edge.load builds it: the target's idle
    # threads spin (plain decoding is ~2% faster so), the draft's do not.
    target = Model(
        open_package(resolve_package(args.target)),
        EngineConfig(threads=args.threads, max_context=2048, tree_verify=bool(args.tree)),
    )
    trees = {
        f"lookup tree {n}{TREE_COMMITS[exact]}": SpeculativeDecoder(
            target.engine,
            LookupDraft(),
            SpeculativeConfig(tree=TreeConfig(max_nodes=n, exact=exact)),
        )
        for n in args.tree
        for exact in ((True, False) if args.tree_whole else (None,))
    }
    if args.draft == "none":
        run_configs(
            args,
            target,
            {
                "target alone": None,
                "lookup": SpeculativeDecoder(target.engine, LookupDraft()),
                **trees,
            },
        )
        return
    draft = Model(
        open_package(resolve_package(args.draft)),
        EngineConfig(threads=args.draft_threads or args.threads, max_context=2048, spinning=False),
    )
    model_only = SpeculativeConfig(lookup_first=False)
    parallel = SpeculativeDecoder(
        target.engine,
        ModelDraft(draft.engine),
        SpeculativeConfig(parallel=True, lookup_first=False),
    )
    configs = {
        "target alone": None,
        "draft model, sequential": SpeculativeDecoder(
            target.engine, ModelDraft(draft.engine), model_only
        ),
        "lookup": SpeculativeDecoder(target.engine, LookupDraft()),
        "lookup, then draft model": SpeculativeDecoder(
            target.engine, ChainedDraft([LookupDraft(), ModelDraft(draft.engine)])
        ),
    }
    if parallel.config.parallel:  # the draft has cores (or a device) of its own
        configs["draft model, parallel"] = parallel
    else:
        print(
            "draft model, parallel: not run, target and draft would share the cores (the "
            "decoder drafts sequentially then); speculative_ceiling.py bounds the overlap",
            file=sys.stderr,
        )
    run_configs(args, target, {**configs, **trees})


def run_configs(
    args: argparse.Namespace, target: Model, configs: dict[str, SpeculativeDecoder | None]
) -> None:
    """Every configuration on every prompt, alternately; then the table."""
    baseline = (
        None
        if args.baseline is None
        else Model(
            open_package(resolve_package(args.baseline)),
            EngineConfig(threads=args.threads, max_context=2048),
        )
    )
    llama = _llama_runs(args)
    rows: dict[str, Row] = {kind: Row() for kind in SPECULATIVE_PROMPTS}
    for _ in range(args.runs):
        for kind, texts in SPECULATIVE_PROMPTS.items():
            for text in texts:
                ids = chat_ids(target, text)
                reference = None
                if baseline is not None:
                    rate = timed(baseline, ids, args.tokens, args.eos)[1]
                    rows[kind].rates.setdefault("baseline alone", []).append(rate)
                    print(f"  {kind:5} {'baseline alone':24} {rate:6.2f} tok/s", file=sys.stderr)
                for name, decoder in configs.items():
                    target.speculative = decoder
                    out, rate, stats = timed(target, ids, args.tokens, args.eos)
                    row = rows[kind]
                    if reference is None:
                        reference = out
                        row.lengths.append(len(out))
                    row.agreement.setdefault(name, []).append(_agreement(out, reference))
                    row.rates.setdefault(name, []).append(rate)
                    if stats is not None:
                        totals = row.counts.setdefault(name, [0, 0, 0, 0])
                        for i, n in enumerate(
                            (stats.drafted, stats.accepted, stats.tokens, stats.target_passes)
                        ):
                            totals[i] += n
                    detail = (
                        ""
                        if stats is None
                        else (
                            f"  {stats.tokens_per_pass:.2f} tokens/pass, "
                            + ", ".join(f"{src} {acc}/{n}" for src, n, acc in stats.by_source)
                        )
                    )
                    print(f"  {kind:5} {name:24} {rate:6.2f} tok/s{detail}", file=sys.stderr)
                own = None  # llama.cpp's plain output, its lookup run's reference
                for name, run in llama.items():
                    _, seconds, out = run(ids, args.tokens)
                    own = own or out
                    rows[kind].rates.setdefault(name, []).append((len(out) - 1) / seconds)
                    rows[kind].agreement.setdefault(name, []).append(_agreement(out, own))
                    rate = rows[kind].rates[name][-1]
                    print(f"  {kind:5} {name:24} {rate:6.2f} tok/s", file=sys.stderr)
    against = f" (baseline: {args.baseline} alone)" if baseline else ""
    print(
        f"\n{args.target} (target) / {args.draft} (draft){against}, {args.threads} threads, "
        f"greedy, {args.tokens} tokens{' or up to EOS' if args.eos else ''}, medians over "
        f"{args.runs} x {len(texts)} prompts\n"
    )
    extra = " vs baseline |" if baseline else ""
    print(
        f"| prompts | configuration | tok/s | speedup |{extra} accepted | tokens/pass | "
        "= target greedy |"
    )
    print("|---|---|---|---|---|---|---|" + ("---|" if baseline else ""))
    for kind, row in rows.items():
        base = statistics.median(row.rates["target alone"])
        for name, rates in row.rates.items():
            rate = statistics.median(rates)
            drafted, accepted, tokens, passes = row.counts.get(name, (0, 0, 0, 0))
            acc = f"{accepted / drafted:.0%}" if drafted else "-"
            per = f"{tokens / passes:.2f}" if passes else "-"
            same = (
                f"{sum(a == r for a, r in zip(row.agreement[name], row.lengths))}/"
                f"{len(row.agreement[name])}"
                if name in row.agreement
                else "-"
            )
            versus = (
                f" {rate / statistics.median(row.rates['baseline alone']):.2f}x |"
                if baseline
                else ""
            )
            print(
                f"| {kind} | {name} | {rate:.2f} | {rate / base:.2f}x |{versus} {acc} | "
                f"{per} | {same} |"
            )


def _llama_runs(args: argparse.Namespace) -> dict:
    """llama.cpp's runs on the target's GGUF, plain and with prompt lookup, warmed up once
    each; {} without --llama-python."""
    if not args.llama_python:
        return {}
    from bench_decode import LlamaServer

    server = LlamaServer(args.llama_python, [args.gguf], args.threads, 2048)
    runs = {
        "llama.cpp alone": server.runner(0, lookup=0),
        f"llama.cpp lookup {args.llama_lookup}": server.runner(0, lookup=args.llama_lookup),
    }
    for run in runs.values():
        run([1, 2, 3, 4], 4)
    return runs


if __name__ == "__main__":
    main()
