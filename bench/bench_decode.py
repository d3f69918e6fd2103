"""Decode speed of edge next to llama.cpp, fair by construction, against the memory bandwidth.

    python bench/bench_decode.py --llama-python /tmp/lead/llama-venv/bin/python \\
        --model smollm2-135m [--model qwen2.5-coder-1.5b] [--gguf Q4_0] --rounds 5

What makes it fair:
- Both engines are warm. Each edge package is loaded once in this process and driven through
  `model.engine` (prefill, then decode with argmax in the loop, as `edge bench` does); every
  GGUF is loaded once in one long-lived llama-cpp-python process (bench/llama_cpp_runner.py
  --serve, run with --llama-python: llama.cpp is not an edge dependency) that answers one
  request per run with the same loop on logits read in place. Every engine runs every prompt
  once untimed first (warm-up).
- Same work: the same token ids (edge's tokenizer) for every engine, three prompts of about
  128 tokens (prose from CPython's `pydoc_data.topics`, a Python snippet, a request formatted
  with the model's chat template), 128 greedy tokens (--gen), the same thread count
  (--threads), the same context size, prompt steps of up to 512 tokens (edge's prefill_chunk,
  llama.cpp's n_batch).
- Same conditions: in each round (--rounds) the engine order rotates (A B C, B C A, ...), so
  drift and noise hit every engine alike. Beside every run the 1-minute load average and the
  CPU time the rest of the machine used during it are recorded: busy jiffies of /proc/stat
  (steal included) minus those of the process that ran the engine. Runs where others used more
  than --max-foreign cores on average are dropped (counted in the header). The streaming read
  bandwidth with the same thread count is measured before the first round and after each;
  the median of the quiet measurements (same test) is used.
- Against the hardware: bytes/token is what one decode step must read (edge: every block and
  head tensor of the package but the prefill-only int8 copies, one row of the embedding;
  llama.cpp: every GGUF tensor but token_embd, one row of which is read, unless no
  output.weight exists and the tied embedding is the head). tok/s × bytes/token over the
  measured bandwidth is the fraction of the memory-bandwidth limit reached (KV cache reads and
  activations are left out, so it is a slight underestimate).

Medians are over every kept run of every prompt; `vs ref` divides decode tok/s by llama.cpp
Q4_0's (--gguf Q4_0) or else by the first llama.cpp engine's. Progress goes to stderr, the
tables to stdout. `--edge PATH` and `--gguf-file PATH` add engines when one --model is given
(or make up the whole comparison without one).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORK = Path.home() / ".cache" / "edge" / "bench"
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PROMPTS = ("prose", "code", "chat")
AGREE_TOKENS = 32
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni")

CODE = '''import heapq
from collections import defaultdict


def shortest_paths(graph: dict[str, dict[str, float]], source: str) -> dict[str, float]:
    """Dijkstra's algorithm: the distance from `source` to every reachable node."""
    distance = defaultdict(lambda: float("inf"))
    distance[source] = 0.0
    queue = [(0.0, source)]
    while queue:
        cost, node = heapq.heappop(queue)
        if cost > distance[node]:
            continue
        for neighbour, weight in graph.get(node, {}).items():
            candidate = cost + weight
            if candidate < distance[neighbour]:
                distance[neighbour] = candidate
                heapq.heappush(queue, (candidate, neighbour))
    return dict(distance)


class LRUCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: dict[str, object] = {}
'''
CHAT_REQUEST = (
    "Summarize this passage from Python's documentation in three short bullet points:\n\n"
)


# ---- pure helpers (tests/test_bench_decode.py) ------------------------------------------------


def rotation(items: Sequence, round_index: int) -> list:
    """`items` rotated left by `round_index`: A B C, B C A, C A B, A B C, ..."""
    if not items:
        return []
    k = round_index % len(items)
    return [*items[k:], *items[:k]]


def fit_words(render: Callable[[str], list[int]], text: str, limit: int) -> list[int]:
    """render(the longest prefix of `text`'s words whose rendering has <= `limit` tokens)."""
    words = text.split(" ")
    lo, hi = 0, len(words)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(render(" ".join(words[:mid]))) <= limit:
            lo = mid
        else:
            hi = mid - 1
    return render(" ".join(words[:lo]))


def agreement(a: Sequence[int], b: Sequence[int], n: int = AGREE_TOKENS) -> tuple[int, int]:
    """(positions among the first n where a and b hold the same token, common prefix length)."""
    same = sum(x == y for x, y in zip(a[:n], b[:n]))
    prefix = 0
    for x, y in zip(a[:n], b[:n]):
        if x != y:
            break
        prefix += 1
    return same, prefix


def edge_decode_bytes(parts: Sequence, vocab_size: int, skip: Sequence[str]) -> int:
    """Bytes one decode step reads from a package's `parts` (format.PartEntry): every tensor
    of blocks and head, one row of each embedding table; none ending in `skip` (prefill-only)."""
    total = 0.0
    for part in parts:
        size = sum(t.nbytes for t in part.tensors if not t.name.endswith(tuple(skip)))
        total += size / vocab_size if part.kind == "embed" else size
    return round(total)


def gguf_decode_bytes(sizes: dict[str, int], vocab_size: int) -> int:
    """Bytes one llama.cpp decode step reads, from GGUF tensor byte sizes by name: all but
    token_embd, of which one row, unless there is no output.weight (tied: it is the head)."""
    rest = {k: v for k, v in sizes.items() if k != "token_embd.weight"}
    embed = sizes.get("token_embd.weight", 0)
    if "output.weight" in rest:
        return sum(rest.values()) + round(embed / vocab_size)
    return sum(rest.values()) + embed


def foreign_cores(busy_jiffies: int, engine_jiffies: int, wall_s: float, hz: int = CLK_TCK):
    """Average cores the rest of the machine kept busy during a run (never below 0)."""
    return max(0.0, (busy_jiffies - engine_jiffies) / hz / wall_s) if wall_s > 0 else 0.0


def cpu_flags(cpuinfo: str) -> tuple[str, list[str]]:
    """(model name, the flags that matter to kernels) from /proc/cpuinfo's text."""
    name, flags = "unknown CPU", set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and name == "unknown CPU":
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    wanted = [f for f in KERNEL_FLAGS if f in flags]
    wanted += sorted(f for f in flags if f.startswith("amx"))
    return name, wanted


# ---- measuring --------------------------------------------------------------------------------


def system_busy() -> int:
    """Busy jiffies of every CPU since boot (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return user + nice + system + irq + softirq + steal


def process_jiffies(pid: int) -> int:
    """utime + stime of process `pid`, all its threads."""
    with open(f"/proc/{pid}/stat") as f:
        data = f.read()
    rest = data[data.rindex(")") + 2 :].split()  # fields from the 3rd (state) on
    return int(rest[11]) + int(rest[12])


@dataclass
class Run:
    engine: str
    prompt: str
    round: int
    prompt_tokens: int
    prefill_s: float
    decode_s: float
    tokens: list[int]
    load1: float
    foreign: float  # cores used by others, on average over the run
    kept: bool = True


@dataclass
class Engine:
    label: str
    kind: str  # "edge" or "llama.cpp"
    decode_bytes: int
    pid: int
    run: Callable[[list[int], int], tuple[float, float, list[int]]]
    runs: list[Run] = field(default_factory=list)


def measured(engine: Engine, name: str, round_index: int, ids: list[int], gen: int) -> Run:
    load1 = os.getloadavg()[0]
    busy, own, start = system_busy(), process_jiffies(engine.pid), time.perf_counter()
    prefill, decode, tokens = engine.run(ids, gen)
    wall = time.perf_counter() - start
    busy, own = system_busy() - busy, process_jiffies(engine.pid) - own
    return Run(
        engine.label,
        name,
        round_index,
        len(ids),
        prefill,
        decode,
        tokens,
        load1,
        foreign_cores(busy, own, wall),
    )


def edge_runner(engine) -> Callable[[list[int], int], tuple[float, float, list[int]]]:
    import numpy as np

    def run(ids: list[int], gen: int) -> tuple[float, float, list[int]]:
        engine.reset()
        start = time.perf_counter()
        logits = engine.prefill(ids)[0]
        prefill = time.perf_counter() - start
        tokens = []
        start = time.perf_counter()
        for _ in range(gen):
            token = int(np.argmax(logits))
            tokens.append(token)
            logits = engine.decode(token)
        return prefill, time.perf_counter() - start, tokens

    return run


class LlamaServer:
    """bench/llama_cpp_runner.py --serve: every GGUF loaded once, one request per run."""

    def __init__(self, python: str, ggufs: Sequence[Path], threads: int, n_ctx: int) -> None:
        command = [python, str(HERE / "llama_cpp_runner.py"), *map(str, ggufs), "--serve"]
        command += ["--threads", str(threads), "--n-ctx", str(n_ctx)]
        self.proc = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )
        while True:
            line = self._line()
            if line.get("ready"):
                break
        self.models = line["models"]
        self.pid = self.proc.pid

    def _line(self) -> dict:
        while True:
            text = self.proc.stdout.readline()
            if not text:
                raise RuntimeError(f"llama_cpp_runner.py exited (status {self.proc.wait()})")
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                print(f"llama.cpp: {text.rstrip()}", file=sys.stderr)

    def runner(
        self, index: int, lookup: int | None = None
    ) -> Callable[[list[int], int], tuple[float, float, list[int]]]:
        """Greedy runs of model `index`; with `lookup`, through llama-cpp-python's prompt-lookup
        decoding of that many tokens a pass (0: the same path, no drafts)."""
        command: dict = {"model": index} if lookup is None else {"model": index, "lookup": lookup}

        def run(ids: list[int], gen: int) -> tuple[float, float, list[int]]:
            self.proc.stdin.write(json.dumps({**command, "ids": ids, "gen": gen}) + "\n")
            self.proc.stdin.flush()
            reply = self._line()
            if "error" in reply:
                raise RuntimeError(f"llama.cpp: {reply['error']}")
            return reply["prefill_s"], reply["decode_s"], reply["tokens"]

        return run

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


# ---- prompts and sizes ------------------------------------------------------------------------


def make_prompts(tokenizer, n: int) -> dict[str, list[int]]:
    from pydoc_data.topics import topics

    from edge.evaluate import lead_ids

    lead = lead_ids(tokenizer)
    keys = sorted(topics)
    prose = "\n".join(topics[k] for k in keys)
    prompts = {
        "prose": [*lead, *tokenizer.encode(prose[: n * 8], add_special_tokens=False)],
        "code": [*lead, *tokenizer.encode(CODE, add_special_tokens=False)],
    }
    prompts = {k: v[:n] for k, v in prompts.items()}
    passage = " ".join(topics[k] for k in keys[len(keys) // 2 :])[: n * 8]

    def chat(text: str) -> list[int]:
        content = CHAT_REQUEST + text
        if tokenizer.has_chat_template:
            rendered = tokenizer.apply_chat_template([{"role": "user", "content": content}])
            return tokenizer.encode(rendered, add_special_tokens=False)
        return [*lead, *tokenizer.encode(f"User: {content}\nAssistant:", False)]

    prompts["chat"] = fit_words(chat, passage, n)
    return prompts


def package_bytes(path: Path) -> int:
    from edge.format import PREFILL_INT8_SUFFIXES
    from edge.package import open_package

    manifest = open_package(path).manifest
    return edge_decode_bytes(manifest.parts, manifest.spec.vocab_size, PREFILL_INT8_SUFFIXES)


def gguf_bytes(path: Path) -> int:
    from gguf import GGUFReader

    reader = GGUFReader(path)
    sizes = {t.name: int(t.n_bytes) for t in reader.tensors}
    vocab = next(
        (int(t.shape[-1]) for t in reader.tensors if t.name == "token_embd.weight"), 1
    )  # GGUF shapes list ne0 first: [n_embd, n_vocab]
    return gguf_decode_bytes(sizes, vocab)


def edge_label(path: Path) -> str:
    config = json.loads((path / "manifest.json").read_text()).get("exporter", {}).get("config", {})
    quant = config.get("quant") or "fp32"
    details = [config["method"]] if config.get("method") not in (None, "rtn") else []
    if quant.startswith("int4") and config.get("block_size", 32) != 32:
        details.append(f"block {config['block_size']}")
    if quant.startswith("int4") and config.get("symmetric") is False:
        details.append("asymmetric")
    return f"edge {quant}" + (f" ({', '.join(details)})" if details else "")


def gguf_label(path: Path, shipped: bool) -> str:
    kind = path.stem.rsplit(".", 1)[-1].split("-")[-1].upper()  # Q4_1, Q4_K_M, Q4_0
    return f"llama.cpp {kind}" + (" (shipped)" if shipped else "")


# ---- one comparison -----------------------------------------------------------------------------


@dataclass
class Group:
    name: str
    edge: list[Path]
    ggufs: list[tuple[Path, bool]]  # (file, shipped)


def bandwidth(threads: int, max_foreign: float) -> tuple[float, bool]:
    """(streaming read GB/s with `threads` threads, whether the rest of the machine was quiet
    meanwhile, by the same test as the runs)."""
    from devices.bandwidth import measure_read_bandwidth

    busy, own, start = system_busy(), process_jiffies(os.getpid()), time.perf_counter()
    gbps = measure_read_bandwidth(threads, size_bytes=512 << 20)
    wall = time.perf_counter() - start
    busy, own = system_busy() - busy, process_jiffies(os.getpid()) - own
    foreign = foreign_cores(busy, own, wall)
    log(f"bandwidth {gbps:.1f} GB/s, others {foreign:.2f} cores")
    return gbps, foreign <= max_foreign


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def compare(group: Group, args: argparse.Namespace) -> list[str]:
    import edge
    from edge.engine import EngineConfig
    from edge.package import open_package

    n_ctx = max(512, args.prompt_tokens + args.gen + 16)
    engines: list[Engine] = []
    models = []
    # Every engine on huge pages is loaded before any on 4 KiB pages: moving memory onto huge
    # pages (at load) is process-wide, and would move the earlier engines' weights too.
    variants = [(path, True) for path in group.edge]
    variants += [(path, False) for path in group.edge if args.small_pages]
    for path, huge_pages in variants:
        model = edge.Model(
            open_package(path),
            EngineConfig(
                max_context=n_ctx, threads=args.threads, prefill_chunk=512, huge_pages=huge_pages
            ),
            progress=False,
        )
        models.append(model)
        engines.append(
            Engine(
                edge_label(path) + ("" if huge_pages else ", 4 KiB pages"),
                "edge",
                package_bytes(path),
                os.getpid(),
                edge_runner(model.engine),
            )
        )
    if not models:
        raise SystemExit("an edge package is needed (its tokenizer makes the prompt ids)")
    tokenizer = models[0].tokenizer
    prompts = make_prompts(tokenizer, args.prompt_tokens)
    server = None
    if group.ggufs:
        server = LlamaServer(args.llama_python, [g for g, _ in group.ggufs], args.threads, n_ctx)
        for index, ((path, shipped), info) in enumerate(zip(group.ggufs, server.models)):
            if info["n_vocab"] != tokenizer.vocab_size:
                log(
                    f"note: {path.name} has {info['n_vocab']} tokens, edge's tokenizer "
                    f"{tokenizer.vocab_size}"
                )
            engines.append(
                Engine(
                    gguf_label(path, shipped),
                    "llama.cpp",
                    gguf_bytes(path),
                    server.pid,
                    server.runner(index),
                )
            )
    try:
        log(
            f"{group.name}: prompts "
            + ", ".join(f"{k} {len(v)}" for k, v in prompts.items())
            + " tokens; warming up "
            + ", ".join(e.label for e in engines)
        )
        for engine in engines:
            for ids in prompts.values():
                engine.run(ids, args.gen)
        rates = [bandwidth(args.threads, args.max_foreign)]
        for r in range(args.rounds):
            for engine in rotation(engines, r):
                for name, ids in prompts.items():
                    run = measured(engine, name, r, ids, args.gen)
                    run.kept = run.foreign <= args.max_foreign
                    engine.runs.append(run)
                    log(
                        f"round {r + 1}/{args.rounds} {engine.label:<24} {name:<5} "
                        f"decode {args.gen / run.decode_s:7.1f} tok/s  "
                        f"prefill {run.prompt_tokens / run.prefill_s:7.1f} tok/s  "
                        f"load {run.load1:4.2f}  others {run.foreign:4.2f} cores"
                        + ("" if run.kept else "  (dropped)")
                    )
            rates.append(bandwidth(args.threads, args.max_foreign))
    finally:
        if server is not None:
            server.close()
        for model in models:
            model.engine.close()
    return report(group.name, engines, prompts, rates, args)


def report(
    name, engines: list[Engine], prompts, rates: list[tuple[float, bool]], args
) -> list[str]:
    quiet = [g for g, ok in rates if ok]
    gbps = statistics.median(quiet or [g for g, _ in rates])
    every = [g for g, _ in rates]
    runs = [r for e in engines for r in e.runs]
    kept = sum(r.kept for r in runs)
    cpu, flags = cpu_flags(Path("/proc/cpuinfo").read_text())
    loads = statistics.median(r.load1 for r in runs)
    lines = [
        f"## {name}",
        "",
        f"{cpu} [{' '.join(flags) or 'no AVX2'}], {args.threads} threads, read bandwidth "
        f"{gbps:.1f} GB/s (median of {len(quiet) or len(rates)} "
        f"{'quiet measurements' if quiet else 'measurements, none quiet'}; all "
        f"{len(rates)}: {min(every):.1f}-{max(every):.1f}), "
        f"runs kept {kept}, dropped {len(runs) - kept} (others above {args.max_foreign} "
        f"cores), load average median {loads:.2f}; prompts "
        + ", ".join(f"{k} {len(v)}" for k, v in prompts.items())
        + f" tokens, {args.gen} generated",
        "",
    ]
    llamas = [e for e in engines if e.kind == "llama.cpp"]
    ref = next((e for e in llamas if e.label == "llama.cpp Q4_0"), llamas[0] if llamas else None)
    ref = ref or engines[0]

    def chosen(engine: Engine) -> tuple[list[Run], str]:
        good = [r for r in engine.runs if r.kept]
        return (good, "") if good else (engine.runs, " *")

    def decode_median(engine: Engine) -> float:
        good, _ = chosen(engine)
        return statistics.median(args.gen / r.decode_s for r in good)

    lines += [
        "| engine | decode tok/s (median) | prefill tok/s | ms/token | bytes/token (MB) "
        "| fraction of bandwidth | vs ref | runs kept |",
        "|---|---|---|---|---|---|---|---|",
    ]
    noisy = False
    for engine in engines:
        good, mark = chosen(engine)
        noisy |= bool(mark)
        decode = decode_median(engine)
        prefill = statistics.median(r.prompt_tokens / r.prefill_s for r in good)
        fraction = decode * engine.decode_bytes / (gbps * 1e9)
        ratio = decode / decode_median(ref)
        lines.append(
            f"| {engine.label}{' (ref)' if engine is ref else ''} | {decode:.1f}{mark} "
            f"| {prefill:.1f} | {1000 / decode:.2f} | {engine.decode_bytes / 1e6:.1f} "
            f"| {fraction:.2f} | {ratio:.2f} | {len([r for r in engine.runs if r.kept])}"
            f"/{len(engine.runs)} |"
        )
    if noisy:
        lines.append("\n\\* every run of this engine was dropped: the median is over all of them")
    lines += ["", "decode tok/s (median) by prompt:", ""]
    lines += ["| engine | " + " | ".join(prompts) + " |", "|---|" + "---|" * len(prompts)]
    for engine in engines:
        good, _ = chosen(engine)
        cells = []
        for p in prompts:
            values = [args.gen / r.decode_s for r in good if r.prompt == p]
            cells.append(f"{statistics.median(values):.1f}" if values else "-")
        lines.append(f"| {engine.label} | " + " | ".join(cells) + " |")
    edges = [e for e in engines if e.kind == "edge"]
    if edges and llamas:
        lines += [
            "",
            f"greedy tokens, first {AGREE_TOKENS}: positions that agree "
            "(common prefix), informative only",
        ]
        for e in edges:
            for p in prompts:
                cells = []
                for other in llamas:
                    same, prefix = agreement(_tokens(e, p), _tokens(other, p))
                    cells.append(f"{other.label} {same}/{AGREE_TOKENS} ({prefix})")
                lines.append(f"- {e.label}, {p}: " + ", ".join(cells))
    return lines


def _tokens(engine: Engine, prompt: str) -> list[int]:
    return next(r.tokens for r in engine.runs if r.prompt == prompt)


# ---- command line -------------------------------------------------------------------------------


def groups_from(args: argparse.Namespace) -> list[Group]:
    from edge.models.pull import pull
    from edge.resolve import resolve_package

    sys.path.insert(0, str(HERE))
    from bench_ppl import llama_quantize  # a sibling script, not a package

    groups = []
    for name in args.model:
        package = resolve_package(name, progress=False)
        shipped = pull(name, progress=False)
        ggufs = [(shipped, True)]
        for kind in args.gguf:
            target = WORK / f"{shipped.stem}.{kind.upper()}.gguf"
            WORK.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                log(f"quantizing {shipped.name} to {kind.upper()} with llama.cpp")
            ftype = f"LLAMA_FTYPE_MOSTLY_{kind.upper()}"
            ggufs.append((llama_quantize(args.llama_python, shipped, target, ftype), False))
        groups.append(Group(name, [package], ggufs))
    extra_edge = [Path(p).expanduser() for p in args.edge]
    extra_gguf = [(Path(p).expanduser(), False) for p in args.gguf_file]
    if extra_edge or extra_gguf:
        if len(groups) > 1:
            raise SystemExit("--edge and --gguf-file go with one --model (or none)")
        if not groups:
            groups.append(Group("custom", [], []))
        groups[0].edge += extra_edge
        groups[0].ggufs += extra_gguf
    if not groups:
        raise SystemExit("give --model NAME (or --edge PATH with --gguf-file PATH)")
    return groups


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llama-python", required=True, help="python with llama-cpp-python")
    parser.add_argument("--model", action="append", default=[], help="registered model name")
    parser.add_argument(
        "--gguf",
        action="append",
        default=[],
        help="also a GGUF of this llama.cpp type (Q4_0) made with llama.cpp's quantizer",
    )
    parser.add_argument("--edge", action="append", default=[], help="another edge package")
    parser.add_argument("--gguf-file", action="append", default=[], help="another GGUF file")
    parser.add_argument(
        "--small-pages",
        action="store_true",
        help="also run each edge package with its weights left on 4 KiB pages",
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--gen", type=int, default=128, help="greedy tokens per run")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.15,
        help="drop runs where other processes kept more than this many cores busy on average",
    )
    args = parser.parse_args()
    if args.rounds < 1 or args.gen < AGREE_TOKENS or args.threads < 1:
        parser.error("need --rounds >= 1, --gen >= 32, --threads >= 1")
    for group in groups_from(args):
        print("\n".join(compare(group, args)) + "\n", flush=True)


if __name__ == "__main__":
    main()
