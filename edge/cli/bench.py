"""edge bench [MODEL]: prefill and decode tokens/s, medians over several runs."""

from __future__ import annotations

import argparse

from edge.cli.options import add_draft_options, add_model_options

HELP = "measure prefill and decode speed (tokens/s, medians)"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, metavar="MODEL")
    parser.add_argument("-p", "--prompt-tokens", type=int, default=128)
    parser.add_argument("-n", "--gen-tokens", type=int, default=128)
    parser.add_argument("-r", "--runs", type=int, default=3)
    add_model_options(parser)
    add_draft_options(parser)


def main(args: argparse.Namespace) -> int:
    from edge.bench import BenchConfig, bench_engine, bench_prompt
    from edge.cli.options import load_model

    config = BenchConfig(args.prompt_tokens, args.gen_tokens, args.runs)
    model = load_model(args, args.model)
    if model.speculative is not None:
        return _bench_draft(model, args)
    result = bench_engine(model.engine, bench_prompt(model.tokenizer, config.prompt_tokens),
                          config)
    print(f"model    {model.package.root.name} ({model.spec.architecture}, "
          f"{model.engine.segments[0].session.get_providers()[0]}, "
          f"{model.engine.threads} threads)")
    print(f"prefill  {result.prefill_median:8.1f} tok/s  ({config.prompt_tokens}-token prompt, "
          f"median of {config.runs})")
    print(f"decode   {result.decode_median:8.1f} tok/s  ({config.gen_tokens} tokens, "
          f"median of {config.runs})")
    return 0


def _bench_draft(model, args: argparse.Namespace) -> int:
    from edge.bench import bench_speculative

    print(f"target {model.package.root.name}, draft {args.draft}, greedy, "
          f"{args.gen_tokens} tokens, median of {args.runs} x 2 prompts per kind")
    print(f"{'prompts':8} {'plain tok/s':>12} {'draft tok/s':>12} {'speedup':>8} "
          f"{'accepted':>9} {'tok/pass':>9}")
    for row in bench_speculative(model, args.gen_tokens, args.runs):
        print(f"{row.kind:8} {row.plain_tps:12.1f} {row.speculative_tps:12.1f} "
              f"{row.speedup:7.2f}x {row.acceptance:9.0%} {row.tokens_per_pass:9.2f}")
    return 0
