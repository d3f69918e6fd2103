"""Load time (and optionally decode speed) of packages, this tree against another checkout
of edge, side by side.

    git worktree add /tmp/edge-base <commit>
    python bench/bench_load.py --baseline /tmp/edge-base PKG [PKG ...] --runs 7 [--decode 64]

Each sample is a fresh process (`python -I`, the tree's root first on sys.path) that imports
edge and onnxruntime, then times `edge.load(PKG)` warm: the page cache holds the package and
its verification stamp is fresh, which is what every load after the first costs. Trees
alternate sample by sample, so machine noise falls on both alike. Prints the CPU, the median
seconds per tree and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[1])
import edge
import onnxruntime
load = edge.load  # the SDK's imports (lazy in edge/__init__) happen before the clock starts
start = time.perf_counter()
model = load(sys.argv[2], progress=False, threads=2)
loaded = time.perf_counter() - start
tokens, engine = int(sys.argv[3]), model.engine
rate = 0.0
if tokens:  # greedy decode steps, argmax in the loop, after a warm-up step
    logits = engine.prefill(list(range(100, 132)))[0]
    token = int(logits.argmax())
    engine.decode(token)
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(engine.decode(token).argmax())
    rate = tokens / (time.perf_counter() - start)
print(json.dumps({"seconds": loaded, "decode_tps": rate, "edge": edge.__file__}))
"""


def sample(tree: Path, package: Path, cache: Path, tokens: int = 0) -> dict:
    env = {**os.environ, "EDGE_CACHE_DIR": str(cache)}
    out = subprocess.run(
        [sys.executable, "-I", "-c", CHILD, str(tree), str(package), str(tokens)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
        cwd=tree,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["edge"].startswith(str(tree)), result  # the tree asked for, not another
    return result


def cpu_line() -> str:
    model, flags = platform.processor(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model}, {os.cpu_count()} CPUs, flags {' '.join(wanted) or 'none of interest'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("packages", nargs="+", type=Path)
    parser.add_argument("--baseline", type=Path, required=True, help="another edge checkout")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "edge-bench-load-cache"
    )
    parser.add_argument(
        "--decode", type=int, default=0, help="also time this many greedy decode steps"
    )
    args = parser.parse_args()
    trees = {"this tree": HERE.parent, "baseline": args.baseline.resolve()}
    print(f"CPU: {cpu_line()}")
    print(
        "| package | load: this tree (s) | baseline (s) | ratio | decode: this tree (tok/s) "
        "| baseline | ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for package in args.packages:
        runs: dict[str, list[dict]] = {name: [] for name in trees}
        for name, tree in trees.items():  # first loads write stamps: not timed
            sample(tree, package.resolve(), args.cache / name.replace(" ", "-"))
        for _ in range(args.runs):
            for name, tree in trees.items():
                cache = args.cache / name.replace(" ", "-")
                runs[name].append(sample(tree, package.resolve(), cache, args.decode))
        load, rate = (
            [statistics.median(r[key] for r in runs[n]) for n in trees]
            for key in ("seconds", "decode_tps")
        )
        decode = (
            f"{rate[0]:.1f} | {rate[1]:.1f} | {rate[0] / rate[1]:.3f}"
            if args.decode
            else "- | - | -"
        )
        print(
            f"| {package.name} | {load[0]:.3f} | {load[1]:.3f} | {load[0] / load[1]:.3f} | "
            f"{decode} |"
        )


if __name__ == "__main__":
    main()
