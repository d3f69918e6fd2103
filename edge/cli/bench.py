"""edge bench [MODEL]: prefill and decode tokens/s, medians over several runs."""

from __future__ import annotations

import argparse
import sys

from edge.cli.options import add_draft_options, add_model_options, positive_int

HELP = "measure prefill and decode speed (tokens/s, medians)"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="a registered name, GGUF file, Hugging Face folder or edge package",
    )
    parser.add_argument(
        "-p", "--prompt-tokens", type=positive_int, default=128, help="prompt length (128)"
    )
    parser.add_argument(
        "-n", "--gen-tokens", type=positive_int, default=128, help="tokens decoded per run (128)"
    )
    parser.add_argument(
        "-r", "--runs", type=positive_int, default=3, help="runs; medians are reported (3)"
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="stream weights under --memory-budget (default: half the "
        "weights) and report I/O wait, compute and overlap per token",
    )
    parser.add_argument(
        "--timeline",
        default="stream-timeline.png",
        metavar="PNG",
        help="with --stream: where to write the read/compute timeline plot",
    )
    add_model_options(parser)
    add_draft_options(parser)


def main(args: argparse.Namespace) -> int:
    from edge.bench import BenchConfig, bench_engine, bench_prompt
    from edge.cli.options import load_model

    config = BenchConfig(args.prompt_tokens, args.gen_tokens, args.runs)
    if args.stream:
        return _bench_stream(args, config)
    model = load_model(args, args.model)
    if model.speculative is not None:
        return _bench_draft(model, args)
    result = bench_engine(model.engine, bench_prompt(model.tokenizer, config.prompt_tokens), config)
    print(
        f"model    {model.package.root.name} ({model.spec.architecture}, "
        f"{' + '.join(s.backend.describe() for s in model.engine.segments)}, "
        f"{model.engine.threads} threads)"
    )
    print(
        f"prefill  {result.prefill_median:8.1f} tok/s  ({config.prompt_tokens}-token prompt, "
        f"median of {config.runs})"
    )
    print(
        f"decode   {result.decode_median:8.1f} tok/s  ({config.gen_tokens} tokens, "
        f"median of {config.runs})"
    )
    return 0


def _bench_draft(model, args: argparse.Namespace) -> int:
    from edge.bench import bench_speculative

    print(
        f"target {model.package.root.name}, draft {args.draft}, greedy, "
        f"{args.gen_tokens} tokens, median of {args.runs} x 2 prompts per kind"
    )
    print(
        f"{'prompts':8} {'plain tok/s':>12} {'draft tok/s':>12} {'speedup':>8} "
        f"{'reported':>9} {'accepted':>9} {'tok/pass':>9}"
    )
    for row in bench_speculative(model, args.gen_tokens, args.runs):
        reported = "-" if row.reported is None else f"{row.reported:.2f}x"
        print(
            f"{row.kind:8} {row.plain_tps:12.1f} {row.speculative_tps:12.1f} "
            f"{row.speedup:7.2f}x {reported:>9} {row.acceptance:9.0%} "
            f"{row.tokens_per_pass:9.2f}"
        )
    return 0


def _bench_stream(args: argparse.Namespace, config) -> int:
    """Decode under a memory budget with a live per-token line, then the summary and plot."""
    from tqdm import tqdm

    from edge.bench import bench_prompt
    from edge.cli.options import load_model
    from edge.errors import ConfigError
    from edge.package import open_package
    from edge.resolve import resolve_package
    from edge.streaming import streamed_state
    from edge.streaming.report import plot_timeline, summarize
    from memory_sched.budget import format_size

    if args.memory_budget is None:
        package = open_package(resolve_package(args.model, progress=not args.quiet))
        weights = sum(t.nbytes for p in package.manifest.parts for t in p.tensors)
        args.memory_budget = str(weights // 2)
    plot = _can_plot()
    if not plot:
        print(
            "(matplotlib is missing: no timeline plot; pip install 'edge[plot]')", file=sys.stderr
        )
    model = load_model(args, args.model)
    engine = model.engine
    state = streamed_state(engine)
    if state is None:
        raise ConfigError("nothing is streamed under this budget; the model runs resident")
    logits = engine.prefill(bench_prompt(model.tokenizer, config.prompt_tokens))[0]
    with tqdm(
        total=config.gen_tokens, desc="streamed decode", unit="tok", disable=args.quiet
    ) as bar:
        for _ in range(config.gen_tokens):
            logits = engine.decode(int(logits.argmax()))
            step = state.stats.steps[-1]
            bar.set_postfix_str(
                f"I/O wait {step.io_wait * 1e3:.0f} ms, read {step.bytes_read / 1e6:.0f} MB"
            )
            bar.update()
    events = state.prefetcher.events() if state.prefetcher else ()
    print(f"model    {model.package.root.name}, memory budget {format_size(state.budget)}")
    print(f"decode   {summarize(state, events).line()}")
    if events and plot:
        print(f"timeline {plot_timeline(events, args.timeline)}")
    return 0


def _can_plot() -> bool:
    from importlib.util import find_spec

    return find_spec("matplotlib") is not None
