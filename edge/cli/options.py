"""Options several subcommands share, so their spelling and help stay the same everywhere."""

from __future__ import annotations

import argparse
import sys
from typing import Any

# Greedy chat replies of small models fall into loops (SmolLM2-135M repeats a line until the
# token limit); a mild penalty on the last 64 tokens (Ollama's default: 1.1 over 64) ends
# them. Plain completion stays exactly the model's greedy text.
CHAT_REPEAT_PENALTY = 1.1


def _int_at_least(minimum: int) -> Any:
    """An argparse type: an integer >= minimum, so `--seed -1` or `--threads 0` stops with a
    usage message (exit 2) before any model is loaded."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


positive_int = _int_at_least(1)
non_negative_int = _int_at_least(0)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--ctx",
        type=positive_int,
        default=None,
        metavar="N",
        help="context window in tokens (default: min(4096, the model's))",
    )
    parser.add_argument(
        "-t",
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads, at most the usable CPU cores (default: physical cores)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars on stderr")
    parser.add_argument(
        "--plan",
        default=None,
        metavar="auto|FILE",
        help="place parts on this machine's devices: 'auto' (the planner) or "
        "a placement JSON from 'edge plan --json'",
    )
    parser.add_argument(
        "--prepacked-cache",
        choices=("build", "use", "off"),
        default="build",
        help="keep ONNX Runtime's packed weights in edge's cache after the first load and map "
        "them at later ones (about half the peak memory, faster loads, ~2x the package on "
        "disk); 'use': map a stored packing but build none; 'off': pack at every load",
    )
    parser.add_argument(
        "--memory-budget",
        default=None,
        metavar="SIZE",
        help="cap memory (e.g. 600MB, 1.5GiB, 25%%): parts that do not fit "
        "stream from disk while earlier blocks compute",
    )
    parser.add_argument(
        "--kv-dtype",
        choices=("float16", "float32", "int8"),
        default=None,
        help="with --memory-budget: the KV cache's element type (default float16: half the "
        "memory, twice the context a budget holds; int8: a quarter, scales included, llama.cpp's "
        "q8_0 cache; float32: a resident run's arithmetic)",
    )
    group = parser.add_argument_group("home cluster")
    group.add_argument(
        "--cluster",
        default=None,
        metavar="NAME",
        help="split the model over this machine and the paired workers of cluster NAME "
        "(edge cluster serve on each, holding the same package)",
    )
    group.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="a worker to try besides those found by mDNS (repeatable)",
    )
    group.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="NAME",
        help="look for workers by mDNS on this interface (repeatable); default: every "
        "interface except loopback and docker/bridge/veth ones",
    )
    group.add_argument(
        "--distribute",
        choices=["auto", "always"],
        default="auto",
        help="auto: only where a split is predicted faster or the model does not fit here, "
        "over the workers that make it faster; always: split anyway, over every worker found",
    )
    group.add_argument(
        "--split",
        choices=["auto", "pipeline", "tensor"],
        default="auto",
        help="pipeline: contiguous blocks per device; tensor: every block's heads and FFN "
        "shared by all devices; auto: the faster by measured bandwidth and link round trips",
    )


def add_draft_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("speculative decoding")
    group.add_argument(
        "--draft",
        default=None,
        metavar="MODEL|lookup|none",
        help="draft with a small model of the same family, or 'lookup' "
        "(n-grams of the prompt and output; the default under --memory-budget, where a "
        "streamed pass costs the same however many tokens it verifies), or 'none'; greedy "
        "output is the target's own: bit for bit on fp32 and w8a8 packages, streamed and "
        "with --exact, else up to near-ties (int4)",
    )
    group.add_argument(
        "--draft-threads",
        type=positive_int,
        default=None,
        help="CPU threads of the draft model (default: --threads)",
    )
    group.add_argument(
        "--draft-tokens",
        type=positive_int,
        default=None,
        metavar="K",
        help="draft K tokens per round (default: adaptive, up to 8)",
    )
    group.add_argument(
        "--tree",
        type=positive_int,
        default=None,
        metavar="N",
        help="verify a token tree of up to N drafted tokens in one pass (several lookup "
        "continuations and the target's own recycled candidates; the size each pass takes "
        "follows the measured cost of a pass), before any chain draft; needs --draft",
    )
    group.add_argument(
        "--parallel-draft",
        action="store_true",
        help="draft the next tokens while the target verifies (PEARL)",
    )
    group.add_argument(
        "--exact",
        action="store_true",
        help="int4 packages: step at least two tokens, as verification does, so output with "
        "and without --draft (both with --exact) is identical bit for bit; 8-22%% slower "
        "plain decoding",
    )


def add_sampling_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("generation")
    group.add_argument(
        "-n",
        "--max-tokens",
        type=positive_int,
        default=256,
        help="tokens to generate at most (default: 256)",
    )
    group.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0 = greedy, deterministic (default); 0.7 is a common choice",
    )
    group.add_argument(
        "--top-k", type=non_negative_int, default=0, help="keep the k likeliest (0 = off)"
    )
    group.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling (1 = off)")
    group.add_argument(
        "--min-p",
        type=float,
        default=0.0,
        help="drop tokens below min-p x the top probability (0 = off)",
    )
    group.add_argument(
        "--repeat-penalty",
        type=float,
        default=None,
        help="penalise the last 64 tokens but whitespace (1 = off; default: "
        f"{CHAT_REPEAT_PENALTY:g} for chat replies, 1 for plain completion)",
    )
    group.add_argument(
        "--seed",
        type=non_negative_int,
        default=None,
        help="random seed for sampling (an integer >= 0)",
    )
    group.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="TEXT",
        help="stop when TEXT is generated (repeatable)",
    )


def sampling_kwargs(args: argparse.Namespace, chat: bool = False) -> dict[str, Any]:
    """Model.stream's keywords, checked now: a bad value must stop the command before the model
    is loaded (which can take minutes: a pull and an export), not after. A chat reply gets
    `CHAT_REPEAT_PENALTY` unless --repeat-penalty says otherwise."""
    from edge.generate import GenerationConfig
    from edge.sampling import SamplingConfig

    penalty = args.repeat_penalty
    if penalty is None:
        penalty = CHAT_REPEAT_PENALTY if chat else 1.0

    GenerationConfig(
        max_tokens=args.max_tokens,
        stop=tuple(args.stop),
        sampling=SamplingConfig(
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            min_p=args.min_p,
            repetition_penalty=penalty,
            seed=args.seed,
        ),
    )
    return {
        "max_tokens": args.max_tokens,
        "temperature": args.temperature,
        "top_k": args.top_k,
        "top_p": args.top_p,
        "min_p": args.min_p,
        "repetition_penalty": penalty,
        "seed": args.seed,
        "stop": args.stop,
    }


def load_model(args: argparse.Namespace, model: str | None):
    import edge
    from edge.step_inputs import check_threads

    check_threads(args.threads)  # before a pull or an export, not after
    check_threads(getattr(args, "draft_threads", None), "draft threads")
    loaded = edge.load(
        model,
        max_context=args.ctx,
        threads=args.threads,
        progress=not args.quiet,
        memory_budget=args.memory_budget,
        plan=getattr(args, "plan", None),
        cluster=cluster_config(args),
        prepacked_cache=getattr(args, "prepacked_cache", "build"),
        kv_dtype=getattr(args, "kv_dtype", None),
        **draft_kwargs(args),
    )
    if (getattr(args, "plan", None) or args.memory_budget or args.cluster) and not args.quiet:
        where = f"plan {args.plan}:\n" if getattr(args, "plan", None) else ""
        print(f"{where}{loaded.engine.describe()}", file=sys.stderr)
    return loaded


def cluster_config(args: argparse.Namespace) -> Any:
    """edge.load's `cluster` from --cluster/--peer/--distribute/--split (None without
    --cluster)."""
    if not getattr(args, "cluster", None):
        for flag in ("peer", "interface"):
            if getattr(args, flag, None):
                from edge.errors import ConfigError

                raise ConfigError(f"--{flag} needs --cluster NAME")
        return None
    from edge.cluster.placement import ClusterConfig

    return ClusterConfig(
        args.cluster,
        tuple(args.peer),
        interfaces=tuple(args.interface),
        distribute=args.distribute,
        mode=args.split,
    )


def draft_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """edge.load's speculative keywords from --draft* and --exact (none when absent)."""
    exact = {"exact": True} if getattr(args, "exact", False) else {}
    tree_nodes = getattr(args, "tree", None)
    if getattr(args, "draft", None) is None:
        if tree_nodes is not None:
            from edge.errors import ConfigError

            raise ConfigError("--tree needs --draft (lookup, or a draft model)")
        return exact
    from edge.speculative import SpeculativeConfig
    from edge.speculative.token_tree import TreeConfig

    k = args.draft_tokens
    tree = TreeConfig(max_nodes=tree_nodes) if tree_nodes is not None else None
    config = (
        SpeculativeConfig(
            draft_tokens=k,
            max_draft=max(k, 8),
            adaptive=False,
            parallel=args.parallel_draft,
            tree=tree,
        )
        if k
        else SpeculativeConfig(parallel=args.parallel_draft, tree=tree)
    )
    return {
        **exact,
        "draft": args.draft,
        "draft_threads": args.draft_threads,
        "speculative": config,
    }
