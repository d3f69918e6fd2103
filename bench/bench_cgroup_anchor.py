"""edge streamed under a memory limit next to llama.cpp under the same limit, on the same model.

    python bench/bench_cgroup_anchor.py PACKAGE GGUF --llama-python VENV/bin/python \
        [--budgets 300MB 600MB] [--tokens 16] [--ctx 512]

What a user with a small device would try instead of edge: llama.cpp memory-maps the GGUF (its
default) and lets the kernel page the weights in and out. Each run is a fresh process confined
to a memory cgroup of budget + 10% (`bench/memory_cgroup.py`; the page cache it faults in is
charged to the group, and reclaimed under the limit): edge with `--memory-budget` (the engine
sizes itself to the budget; lookup drafts on, its default there, and off), llama.cpp with the
same context, threads and greedy tokens. Both models' files are dropped from the page cache
before every run, so that what a run maps or reads is charged to its own group. Reported per
run: exit (an OOM kill is -9), decode tokens/s, the process's peak RSS (VmHWM), the group's
peak, its limit hits, and the tokens. Markdown to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from memory_cgroup import confined, make_cgroup  # noqa: E402  (a sibling script)

OVERHEAD = 0.10  # the group's limit over the budget, as in the cgroup test
PROMPT = "def fibonacci(n):"

HWM = """
def vm_hwm():
    return 1024 * int(next(line.split()[1] for line in open("/proc/self/status")
                           if line.startswith("VmHWM:")))
"""

EDGE_CHILD = (
    HWM
    + """
import json, sys, time
import edge
package, budget, ctx, tokens, draft = sys.argv[1:6]
model = edge.load(package, memory_budget=int(budget), max_context=int(ctx), progress=False,
                  verify="sizes", draft=None if draft == "default" else draft)
ids = []
start = None
for result in model.stream(sys.argv[6], max_tokens=int(tokens), ignore_eos=True,
                           temperature=0):
    if start is None:
        start = time.perf_counter()  # after the first token: decode only
    ids.append(result.token)
decode_s = time.perf_counter() - start
print("RESULT " + json.dumps({"tokens": ids, "tok_s": (len(ids) - 1) / decode_s,
                              "vm_hwm": vm_hwm(), "ctx": model.engine.max_context}))
"""
)

LLAMA_CHILD = (
    HWM
    + """
import json, sys, time
import numpy as np
from llama_cpp import Llama
gguf, ctx, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
llm = Llama(model_path=gguf, n_ctx=ctx, n_threads=2, n_batch=64, verbose=False)

def newest():  # the last position's logits, in place (no copy unless logits_all)
    return np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))

llm.eval(llm.tokenize(sys.argv[4].encode(), add_bos=False))
ids = [int(np.argmax(newest()))]
start = time.perf_counter()
for _ in range(tokens - 1):
    llm.eval([ids[-1]])
    ids.append(int(np.argmax(newest())))
decode_s = time.perf_counter() - start
print("RESULT " + json.dumps({"tokens": ids, "tok_s": (tokens - 1) / decode_s,
                              "vm_hwm": vm_hwm(), "ctx": ctx}))
"""
)


def parse_size(text: str) -> int:
    from memory_sched.budget import MemoryBudget

    return MemoryBudget.parse(text).limit


def evict(paths: list[Path]) -> None:
    """Drop the files' clean pages from the page cache. A page is charged to the cgroup that
    first faulted it: pages still cached from an earlier run would be charged to no group of
    ours, and a memory-mapped model would escape the limit it is run under."""
    files = [p for root in paths for p in ([root] if root.is_file() else root.rglob("*"))]
    for path in files:
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def run_confined(
    label: str, budget: int, command: list[str], timeout: float, files: list[Path]
) -> dict:
    """`command` in a fresh memory cgroup of budget + OVERHEAD, with `files` out of the page
    cache first; its result and the group's."""
    evict(files)
    group = make_cgroup(f"edge-anchor-{os.getpid()}-{time.monotonic_ns()}")
    try:
        group.set_limit(int(budget * (1 + OVERHEAD)))
        started = time.perf_counter()
        try:
            done = subprocess.run(
                confined(group, command),
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
            )
            code, stdout, stderr = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired:
            code, stdout, stderr = "timeout", "", f"no result in {timeout:.0f} s"
        wall = time.perf_counter() - started
        result = next(
            (json.loads(x[7:]) for x in stdout.splitlines() if x.startswith("RESULT ")), None
        )
        return {
            "label": label,
            "exit": code,
            "wall_s": wall,
            "group_peak": group.peak(),
            "limit": group.limit(),
            "events": group.events(),
            "result": result,
            "error": stderr.strip().splitlines()[-1][:200] if result is None and stderr else "",
        }
    finally:
        group.remove()


def row(budget_text: str, run: dict) -> str:
    mib = 1 << 20
    result = run["result"]
    peak = f"{run['group_peak'] / mib:.0f} MiB" if run["group_peak"] else "n/a"
    if result is None:
        outcome = "OOM-killed" if run["exit"] in (-9, 137) else f"exit {run['exit']}"
        return (
            f"| {budget_text} | {run['label']} | {outcome}: {run['error']} | | | {peak} "
            f"| {run['events']} |"
        )
    return (
        f"| {budget_text} | {run['label']} | {result['tok_s']:.2f} (ctx {result['ctx']}) "
        f"| {result['vm_hwm'] / mib:.0f} MiB | {run['wall_s']:.0f} s | {peak} | {run['events']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("gguf", type=Path)
    parser.add_argument("--llama-python", required=True)
    parser.add_argument("--budgets", nargs="+", default=["300MB", "600MB"])
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--ctx", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=900.0)
    args = parser.parse_args()
    print(
        f"{args.package.name} (edge) and {args.gguf.name} (llama.cpp), context {args.ctx}, "
        f"{args.tokens} greedy tokens after {PROMPT!r}, 2 threads, cgroup limit = budget + "
        f"{OVERHEAD:.0%}\n"
    )
    print("| budget | engine | decode tok/s | peak RSS (VmHWM) | wall | group peak | limit hits |")
    print("|---|---|---|---|---|---|---|")
    tokens: dict[str, list[int]] = {}
    for text in args.budgets:
        budget = parse_size(text)
        edge_args = [str(args.package), str(budget), str(args.ctx), str(args.tokens)]
        runs = [
            (
                f"edge streamed, lookup drafts ({draft})",
                [sys.executable, "-c", EDGE_CHILD, *edge_args, draft, PROMPT],
            )
            for draft in ("default", "none")
        ]
        llama_args = [str(args.gguf), str(args.ctx), str(args.tokens), PROMPT]
        runs.append(
            ("llama.cpp, memory-mapped", [args.llama_python, "-c", LLAMA_CHILD, *llama_args])
        )
        for label, command in runs:
            run = run_confined(label, budget, command, args.timeout, [args.package, args.gguf])
            print(row(text, run), flush=True)
            if run["result"] is not None:
                tokens[f"{text} {label}"] = run["result"]["tokens"]
    print()
    for name, ids in tokens.items():
        print(f"- {name}: {ids}")


if __name__ == "__main__":
    main()
