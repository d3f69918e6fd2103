"""Pipeline over workers on loopback vs one device, warm against warm, alternated run by run.

Each configuration (one engine here; this machine plus 1..N workers, equal shares) is loaded
once and warmed, then the configurations take turns: a prompt (time to first token) and greedy
decode. Reported per configuration: median decode tok/s and TTFT, their ratio to one device,
activation bytes on the wire per token (see `wire_bytes`), and each worker's peak RSS. All
processes share this machine's cores, so the pipeline's speed here measures its communication
and bookkeeping, not a speedup: with one request a pipeline computes on one device at a time.

    python bench/bench_cluster.py PACKAGE --workers 1 2 3 --tokens 32 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge.cluster.keys import KeyStore  # noqa: E402
from edge.cluster.pairing import PairingServer, join  # noqa: E402
from edge.cluster.placement import ClusterConfig, Member, cluster_placement  # noqa: E402
from edge.engine import Engine, EngineConfig  # noqa: E402
from edge.package import open_package  # noqa: E402

CLUSTER = "bench"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def start_worker(package: Path, coordinator: KeyStore, root: Path, index: int, threads: int):
    config_dir = root / f"worker{index}"
    store = KeyStore(config_dir)
    node_id, keys = store.node()
    server = PairingServer(coordinator, CLUSTER, "tcp://127.0.0.1:0")
    thread = threading.Thread(target=lambda: server.serve(30))
    thread.start()
    join(store, server.endpoints[0], server.code)
    thread.join(30)
    env = {**os.environ, "EDGE_CONFIG_DIR": str(config_dir), "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "edge.cli.main", "cluster", "serve", str(package)]
    command += ["--listen", "127.0.0.1:0", "--no-advertise", "--no-profile"]
    command += ["--threads", str(threads)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("serving"):
        proc.kill()
        raise SystemExit(f"worker {index} did not start: {line}")
    return proc, Member(node_id, line.split()[-1], keys.public, 1)


def peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def wire_bytes(start: int, end: int, parts: int, spec) -> int:
    """One decode token's payload to and from a worker holding parts [start, end): a token id
    or a hidden state in, a hidden state or the logits out (frame headers not counted)."""
    sent = 8 if start == 0 else 4 * spec.hidden_size
    return sent + (4 * spec.vocab_size if end == parts else 4 * spec.hidden_size)


def run_once(engine: Engine, prompt: list[int], tokens: int) -> tuple[float, float]:
    """(TTFT seconds, decode tokens per second) of one greedy generation."""
    engine.reset()
    start = time.perf_counter()
    logits = engine.prefill(prompt)[0]
    ttft = time.perf_counter() - start
    token = int(np.argmax(logits))
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(np.argmax(engine.decode(token)))
    return ttft, tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("package", type=Path)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="edge-bench-cluster-"))
    os.environ["EDGE_CONFIG_DIR"] = str(root / "coordinator")
    coordinator = KeyStore(root / "coordinator")
    coordinator.init_cluster(CLUSTER)
    # Each configuration its own workers: a worker holds one slice at a time.
    workers = [
        start_worker(args.package, coordinator, root, i, args.threads)
        for i in range(sum(args.workers))
    ]
    package = open_package(args.package, verify="sizes")
    spec = package.spec
    prompt = [(7 * i + 100) % spec.vocab_size for i in range(args.prompt)]
    engines = {"one device": Engine(package, EngineConfig(threads=args.threads, max_context=512))}
    first = 0
    for k in args.workers:
        config = ClusterConfig(CLUSTER, distribute="always")
        members = [m for _, m in workers[first : first + k]]
        first += k
        placement, why = cluster_placement(package, config, members)
        assert placement is not None, why
        engines[f"here + {k} worker{'s' * (k > 1)}"] = Engine(
            package, EngineConfig(threads=args.threads, max_context=512, placement=placement)
        )
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for engine in engines.values():  # warm-up
        run_once(engine, prompt, 4)
    for _ in range(args.rounds):
        for name, engine in engines.items():
            results[name].append(run_once(engine, prompt, args.tokens))

    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
    print(f"{args.package.name}: {args.prompt}-token prompt, {args.tokens} tokens, threads")
    print(f"{args.threads} per process, median of {args.rounds} alternated rounds\n")
    print("| configuration | decode tok/s | vs one device | TTFT ms | wire bytes/token |")
    print("|---|---|---|---|---|")
    base = statistics.median(r[1] for r in results["one device"])
    for name, engine in engines.items():
        tps = statistics.median(r[1] for r in results[name])
        ttft = statistics.median(r[0] for r in results[name]) * 1e3
        wire = sum(
            wire_bytes(s.start, s.end, len(package.manifest.parts), spec)
            for s in engine.segments
            if s.backend.name == "cluster"
        )
        print(f"| {name} | {tps:.1f} | {tps / base:.2f}x | {ttft:.0f} | {wire} |")
    rss = [f"{peak_rss(proc.pid) / 2**20:.0f} MiB" for proc, _ in workers]
    print(f"\nworker peak RSS: {', '.join(rss)}")
    for engine in engines.values():
        engine.close()
    for proc, _ in workers:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
