"""Pipeline and tensor parallel over workers on loopback vs one device, warm against warm,
alternated run by run; then each mode's time per token predicted at home-LAN round trips.

Each configuration (one engine here; this machine plus 1..N workers, pipeline or tensor,
equal shares) is loaded once and warmed, then the configurations take turns: a prompt (time to
first token) and greedy decode. Reported per configuration: median decode tok/s and TTFT,
their ratio to one device, activation bytes on the wire per token, reductions per token and
the wait per reduction (tensor), and each worker's peak RSS next to what its share holds.

All processes share this machine's cores, so the measured speed is communication and
bookkeeping, not a speedup. The second table predicts separate devices of this machine's speed
from the measured parts (TPI-LLM's latency model): compute = one device's measured decode time
/ N (tensor) or the whole of it (pipeline, one device at a time), link = round trips per token
x (RTT + the measured per-exchange cost on loopback).

    python bench/bench_cluster.py PACKAGE --workers 1 2 3 --modes pipeline tensor
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
sys.path.insert(0, str(REPO / "bench"))

from edge.cluster.client import WorkerClient  # noqa: E402
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
    return proc, Member(node_id, line.split()[-1], keys.public, 1 << 40)


def peak_rss(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def held_bytes(engine: Engine, package) -> list[int]:
    """What each worker of `engine` is predicted to add to its peak RSS: its share's slices,
    KV cache and kernel runtime (tensor), or its parts' weights plus its KV cache (pipeline;
    ONNX Runtime's own copies are not counted), in worker order."""
    out = []
    parts = package.manifest.parts
    for segment in engine.segments:
        if segment.backend.name == "tensor":
            out += [int(link.info()["slice"]["predicted_growth"]) for link in segment.loaded.links]
        elif segment.backend.name == "cluster":
            info = segment.loaded.link.info()["slice"]
            weights = sum(t.nbytes for p in parts[info["start"] : info["end"]] for t in p.tensors)
            out.append(weights + int(info["kv_bytes"]))
    return out


def tensor_stats(engine: Engine) -> tuple[int, float, int]:
    """(reductions, seconds waited, bytes sent) summed over the engine's tensor segments."""
    stats = [s.loaded.stats for s in engine.segments if s.backend.name == "tensor"]
    return (
        sum(x.reductions for x in stats),
        sum(x.wait_s for x in stats),
        sum(x.bytes_sent for x in stats),
    )


def shard_compute_s(package, threads: int, tokens: int = 32) -> float:
    """Seconds per decoded token of the tensor path's compute alone: one `ShardRunner` share
    holding every head and column of every block, its reductions done in-process."""
    from edge.cluster.shard_runner import ShardRunner, block_weights, finish
    from edge.cluster.shards import Share

    spec = package.spec
    share = Share((0, spec.num_heads), (0, spec.intermediate_size))
    runner = ShardRunner(spec, block_weights(package, 0, spec.num_layers), share, 512, threads)
    x0 = np.random.default_rng(0).standard_normal((1, spec.hidden_size)).astype(np.float32)
    times = []
    for position in range(tokens):
        start = time.perf_counter()
        x = x0
        for layer, reduction in runner.reductions.items():
            for phase in ("attention", "ffn"):
                x = finish(spec, reduction, phase, runner.partial(phase, layer, x, position), x)
        times.append(time.perf_counter() - start)
    return statistics.median(times[4:])


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
    parser.add_argument("--modes", nargs="+", choices=["pipeline", "tensor"], default=["tensor"])
    parser.add_argument("--rtt-ms", type=float, nargs="+", default=[0.2, 2.0, 10.0])
    parser.add_argument(
        "--chart", type=Path, default=None, help="write the predicted speedups as an SVG chart"
    )
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="edge-bench-cluster-"))
    os.environ["EDGE_CONFIG_DIR"] = str(root / "coordinator")
    coordinator = KeyStore(root / "coordinator")
    coordinator.init_cluster(CLUSTER)
    # Each configuration its own workers: a worker holds one slice or share at a time.
    workers = [
        start_worker(args.package, coordinator, root, i, args.threads)
        for i in range(sum(args.workers) * len(args.modes))
    ]
    idle_rss = {proc.pid: peak_rss(proc.pid, "VmRSS") for proc, _ in workers}
    package = open_package(args.package, verify="sizes")
    spec = package.spec
    prompt = [(7 * i + 100) % spec.vocab_size for i in range(args.prompt)]
    engines = {"one device": Engine(package, EngineConfig(threads=args.threads, max_context=512))}
    held: dict[str, list[int]] = {}
    first = 0
    for mode in args.modes:
        for k in args.workers:
            config = ClusterConfig(CLUSTER, distribute="always", mode=mode)
            members = [m for _, m in workers[first : first + k]]
            pids = [proc.pid for proc, _ in workers[first : first + k]]
            first += k
            placement, why = cluster_placement(package, config, members)
            assert placement is not None, why
            name = f"{mode}: here + {k} worker{'s' * (k > 1)}"
            engines[name] = Engine(
                package, EngineConfig(threads=args.threads, max_context=512, placement=placement)
            )
            held[name] = pids
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in engines}
    for engine in engines.values():  # warm-up
        run_once(engine, prompt, 4)
    counted = {name: tensor_stats(engine) for name, engine in engines.items()}
    for _ in range(args.rounds):
        for name, engine in engines.items():
            results[name].append(run_once(engine, prompt, args.tokens))
    after = {name: tensor_stats(engine) for name, engine in engines.items()}

    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
    print(f"{args.package.name}: {args.prompt}-token prompt, {args.tokens} tokens, threads")
    print(f"{args.threads} per process, median of {args.rounds} alternated rounds\n")
    print(
        "| configuration | decode tok/s | vs one device | TTFT ms | wire bytes/token "
        "| reductions/token | wait ms/reduction | worker peak RSS MiB "
        "| worker RSS growth / predicted MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    base = statistics.median(r[1] for r in results["one device"])
    tokens_run = args.rounds * (args.tokens + 1)
    for name, engine in engines.items():
        tps = statistics.median(r[1] for r in results[name])
        ttft = statistics.median(r[0] for r in results[name]) * 1e3
        reductions = after[name][0] - counted[name][0]
        wait = after[name][1] - counted[name][1]
        if reductions:
            # per decoded token: hidden states [1, H] to and from each worker per reduction
            links = sum(len(s.loaded.links) for s in engine.segments if s.backend.name == "tensor")
            per_token_count = reductions / tokens_run
            wire = int(per_token_count * links * 2 * 4 * spec.hidden_size)
            per_token = f"{per_token_count:.0f}"
            per_reduction = f"{1e3 * wait / reductions:.3f}"
        else:
            wire = sum(
                wire_bytes(s.start, s.end, len(package.manifest.parts), spec)
                for s in engine.segments
                if s.backend.name == "cluster"
            )
            per_token = per_reduction = "-"
        pids = held.get(name, [])
        rss = " / ".join(f"{peak_rss(pid) / 2**20:.0f}" for pid in pids)
        growth = " / ".join(
            f"{(peak_rss(pid) - idle_rss[pid]) / 2**20:.0f} of {b / 2**20:.0f}"
            for pid, b in zip(pids, held_bytes(engine, package))
        )
        print(
            f"| {name} | {tps:.1f} | {tps / base:.2f}x | {ttft:.0f} | {wire} | {per_token} "
            f"| {per_reduction} | {rss or '-'} | {growth or '-'} |"
        )

    # TPI-LLM's latency model from the measured parts.
    compute = 1 / base
    shard_s = shard_compute_s(package, args.threads)
    _, member = workers[0]
    with WorkerClient(member.endpoint, member.public, coordinator.cluster_keys(CLUSTER)) as link:
        exchange = statistics.median(link.ping() for _ in range(200))
    blocks = sum(p.kind == "block" for p in package.manifest.parts)
    print(
        f"\npredicted ms/token for separate devices of this speed (one device measured "
        f"{1e3 * compute:.1f} ms; a request/reply on loopback {1e3 * exchange:.3f} ms + RTT):\n"
    )
    # The embedding and the head stay on the coordinator: their share of one device's step,
    # by the bytes a decode step reads (one embedding row: nothing).
    sizes = {p.kind: 0 for p in package.manifest.parts}
    for p in package.manifest.parts:
        sizes[p.kind] += sum(t.nbytes for t in p.tensors)
    head_s = compute * sizes["head"] / (sizes["head"] + sizes["block"])
    best = min(compute, shard_s + head_s)
    print(
        f"(tensor: the shares' own compute measured in-process, one share holding every block: "
        f"{1e3 * shard_s:.1f} ms/token, divided by N, plus the head here, "
        f"{1e3 * head_s:.1f} ms by its bytes; speedups are against the faster single-device "
        f"path, {1e3 * best:.1f} ms)\n"
    )
    print("| devices | mode | " + " | ".join(f"RTT {r:g} ms" for r in args.rtt_ms) + " |")
    print("|---|---|" + "---|" * len(args.rtt_ms))
    bars: list[tuple[str, float]] = []
    for n in sorted({k + 1 for k in args.workers}):
        for mode in ("pipeline", "tensor"):
            cells = []
            for rtt in args.rtt_ms:
                hop = exchange + rtt / 1e3
                if mode == "tensor":
                    t = head_s + shard_s / n + 2 * blocks * hop
                else:
                    t = compute + (n - 1) * hop
                cells.append(f"{1e3 * t:.1f} ({best / t:.2f}x)")
                bars.append((f"{n} devices, {mode}, RTT {rtt:g} ms", best / t))
            print(f"| {n} | {mode} | " + " | ".join(cells) + " |")
    if args.chart is not None:
        from svg_chart import bar_chart

        title = f"{args.package.name}: predicted speedup over one device"
        args.chart.write_text(bar_chart(title, bars))
    for engine in engines.values():
        engine.close()
    for proc, _ in workers:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
