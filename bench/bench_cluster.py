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

With `--delay-ms D ...` every worker link goes through a delaying TCP proxy (bench/
delay_proxy.py, in a child process: D/2 each way, so a round trip gains D) and each
configuration is measured at 0 (through the proxy: the baseline) and every D, alternated round
by round: decode tok/s, TTFT, each round trip (a hop, or a reduction's slowest worker) as the
coordinator sees it, and the TCP bytes the proxies carried per token, next to the latency
model's prediction (ms/token at 0 + round trips/token x D) and its error.

    python bench/bench_cluster.py PACKAGE --workers 1 2 3 --modes pipeline tensor
    python bench/bench_cluster.py PACKAGE --workers 2 3 --modes pipeline tensor \
        --delay-ms 0.2 2 10 --chart rtt.svg

With `--reductions star ring` each tensor configuration is loaded once with its workers linked
into a ring and run both ways, alternated run by run on the same processes and shares: the
star (every worker's hidden states through this machine's link) against the ring (worker to
worker, N + 1 one-way trips a reduction); a round trip of the ring counts (N + 1) / 2.

    python bench/bench_cluster.py PACKAGE --workers 2 3 --reductions star ring \
        --delay-ms 10 --prompt 256 --rate-mbps 100
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
from collections.abc import Callable
from dataclasses import dataclass, replace
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from delay_proxy import ProxyProcess  # noqa: E402

from edge.cluster.client import WorkerClient  # noqa: E402
from edge.cluster.keys import KeyStore  # noqa: E402
from edge.cluster.members import Member  # noqa: E402
from edge.cluster.pairing import PairingServer, join  # noqa: E402
from edge.cluster.placement import ClusterConfig, cluster_placement  # noqa: E402
from edge.cluster.transport import parse_peer  # noqa: E402
from edge.engine import Engine, EngineConfig  # noqa: E402
from edge.package import open_package  # noqa: E402
from edge.placement import Placement  # noqa: E402

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


@dataclass
class Run:
    """One greedy generation: its timings, and what its links did while it decoded."""

    ttft_s: float
    decode_s: float
    tokens: int
    # "prefill" / "decode": each exchange's seconds and the round trips it counts as
    trips: dict[str, list[tuple[float, float]]]
    wire: int  # bytes to and from the workers while decoding, as the proxies counted them
    reductions: int
    wait_s: float


class LinkTimer:
    """Round trips of one engine's worker links, timed at the coordinator while `phase` is
    set: a pipeline hop from its step request to the reply, a tensor reduction from its first
    request to the last worker's partial."""

    def __init__(self, engine: Engine) -> None:
        self.phase: str | None = None
        self.trips: dict[str, list[tuple[float, float]]] = {}
        self._open, self._since, self._stages, self._ring = 0, 0.0, 0, 0
        for loaded in engine.loaded_segments():
            for link in getattr(loaded, "links", []):
                self._wrap_reduction(link)
            if hasattr(loaded, "link"):
                self._wrap_hop(loaded.link)

    def _record(self, seconds: float, round_trips: float = 1.0) -> None:
        if self.phase is not None:
            self.trips.setdefault(self.phase, []).append((seconds, round_trips))

    def _wrap_hop(self, link: Any) -> None:
        """A pass through pipeline stages, from the first stage's step request to the reply
        of the last: k linked workers hand the hidden states on directly, k + 1 one-way
        trips, so (k + 1) / 2 round trips (one for a worker alone)."""
        submit, reply = link.submit, link.step_reply

        def timed_submit(kind: str, *args: Any, **kwargs: Any) -> int:
            if kind == "step":
                if not self._stages:
                    self._since = time.perf_counter()
                self._stages += 1
            return submit(kind, *args, **kwargs)

        def timed_reply(*args: Any, **kwargs: Any) -> np.ndarray:
            out = reply(*args, **kwargs)
            self._record(time.perf_counter() - self._since, (self._stages + 1) / 2)
            self._stages = 0
            return out

        link.submit, link.step_reply = timed_submit, timed_reply

    def _wrap_reduction(self, link: Any) -> None:
        """A reduction from its first request to its last reply: a star's, one round trip; a
        ring of N workers' (a turn asked of each), N + 1 one-way trips."""
        for name in ("submit_partial", "submit_ring"):
            setattr(link, name, self._opening(getattr(link, name), name == "submit_ring"))
        for name in ("partial", "handed_on"):
            setattr(link, name, self._closing(getattr(link, name)))

    def _opening(self, submit: Callable[..., int], ring: bool) -> Callable[..., int]:
        def timed(*args: Any, **kwargs: Any) -> int:
            if not self._open:
                self._since, self._ring = time.perf_counter(), 0
            self._open += 1
            self._ring += ring
            return submit(*args, **kwargs)

        return timed

    def _closing(self, reply: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            out = reply(*args, **kwargs)
            self._open -= 1
            if not self._open:
                trips = (self._ring + 1) / 2 if self._ring else 1.0
                self._record(time.perf_counter() - self._since, trips)
            return out

        return timed

    def take(self) -> dict[str, list[tuple[float, float]]]:
        trips, self.trips = self.trips, {}
        return trips


def run_once(
    engine: Engine,
    prompt: list[int],
    tokens: int,
    timer: LinkTimer | None = None,
    wire: Callable[[], int] = lambda: 0,
) -> Run:
    """One greedy generation: a prompt (time to first token), then `tokens` decode steps."""
    engine.reset()
    timer = timer or LinkTimer(engine)
    timer.take()
    timer.phase = "prefill"
    start = time.perf_counter()
    logits = engine.prefill(prompt)[0]
    ttft = time.perf_counter() - start
    token = int(np.argmax(logits))
    timer.phase = "decode"
    wire_before, (reductions, wait_s, _) = wire(), tensor_stats(engine)
    start = time.perf_counter()
    for _ in range(tokens):
        token = int(np.argmax(engine.decode(token)))
    decode_s = time.perf_counter() - start
    timer.phase = None
    wire_after, (reductions_after, wait_after, _) = wire(), tensor_stats(engine)
    return Run(
        ttft,
        decode_s,
        tokens,
        timer.take(),
        wire_after - wire_before,
        reductions_after - reductions,
        wait_after - wait_s,
    )


def link_stages(engine: Engine, linked: bool) -> None:
    """Pipeline stages on workers handing their output to each other (as the engine links
    them), or each passing it through this machine (two trips per worker)."""
    if linked:
        engine._link_stages()
        return
    for segment in engine.segments:
        segment.backend.chain(segment.loaded, None)


def with_reduction(placement: Placement, reduction: str) -> Placement:
    """`placement` with its tensor segment's reduction set."""
    segments = tuple(
        replace(s, options=(*s.options, ("reduction", reduction))) if s.backend == "tensor" else s
        for s in placement.segments
    )
    return Placement(segments)


def set_reduction(engine: Engine, reduction: str | None) -> None:
    """Run the engine's tensor segments' next reductions by the star or (linked) ring."""
    for loaded in engine.loaded_segments():
        if reduction is not None and hasattr(loaded, "links"):
            loaded.reduction = reduction


def proxy_bytes(proxies: ProxyProcess | None, indices: list[int]) -> Callable[[], int]:
    """Bytes the proxies `indices` have carried so far, both ways (0 without proxies)."""
    if proxies is None or not indices:
        return lambda: 0
    return lambda: sum(sum(proxies.counts()[i]) for i in indices)


def per_token(runs: list[Run], phase: str = "decode") -> float:
    """Round trips per decoded token (per prompt for "prefill")."""
    count = sum(weight for r in runs for _, weight in r.trips.get(phase, []))
    return count / (sum(r.tokens for r in runs) if phase == "decode" else len(runs))


def median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values) if values else float("nan")


def overlay_chart(title: str, rows: list[tuple[str, float, float | None]]) -> str:
    """Horizontal bars (a prediction) with a point over each (the measured value), as SVG."""
    bar, gap, label_width, plot_width = 22, 8, 300, 420
    top = max(max(p, m or 0.0) for _, p, m in rows) * 1.1 or 1.0
    height = 60 + len(rows) * (bar + gap)
    scale = plot_width / top
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_width + plot_width + 130}" '
        f'height="{height}" font-family="sans-serif" font-size="13">',
        f'<text x="10" y="22" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{label_width}" y="32" width="14" height="10" fill="#9a9a9a"/>',
        f'<text x="{label_width + 18}" y="42">predicted (TPI-LLM latency model)</text>',
        f'<circle cx="{label_width + 257}" cy="37" r="5" fill="#2b7bb9"/>',
        f'<text x="{label_width + 266}" y="42">with the measured link</text>',
        f'<line x1="{label_width + scale:.1f}" y1="48" x2="{label_width + scale:.1f}" '
        f'y2="{height - 4}" stroke="#444" stroke-dasharray="3,3"/>',
    ]
    for i, (label, predicted, measured) in enumerate(rows):
        y = 56 + i * (bar + gap)
        width = scale * predicted
        text = f"{predicted:.2f}x" + ("" if measured is None else f" / {measured:.2f}x")
        parts += [
            f'<text x="{label_width - 8}" y="{y + 16}" text-anchor="end">{escape(label)}</text>',
            f'<rect x="{label_width}" y="{y}" width="{width:.1f}" height="{bar}" fill="#9a9a9a"/>',
            f'<text x="{label_width + max(width, scale * (measured or 0)) + 10:.1f}" '
            f'y="{y + 16}">{text}</text>',
        ]
        if measured is not None:
            cx = label_width + scale * measured
            parts.append(
                f'<circle cx="{cx:.1f}" cy="{y + bar / 2}" r="6" fill="#2b7bb9" stroke="white"/>'
            )
    return "\n".join([*parts, "</svg>"]) + "\n"


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
        "--delay-ms",
        type=float,
        nargs="+",
        action="extend",
        default=None,
        metavar="D",
        help="every worker link through a delaying proxy, measured at round trip 0 (the "
        "baseline, through the proxy) and each D ms (D/2 each way); repeatable",
    )
    parser.add_argument(
        "--via-here",
        action="store_true",
        help="also run each pipeline of 2+ workers with every stage's output passing through "
        "this machine (two trips per worker) instead of worker to worker, alternated with it",
    )
    parser.add_argument(
        "--rate-mbps",
        type=float,
        default=0.0,
        help="with --delay-ms: every worker's network port carries this many Mbit/s each way "
        "(a switched LAN, bench/delay_proxy.py's Ports; 0: not limited)",
    )
    parser.add_argument(
        "--coordinator-rate-mbps",
        type=float,
        default=None,
        help="with --rate-mbps: this machine's port (default: the workers' rate)",
    )
    parser.add_argument(
        "--reductions",
        nargs="+",
        choices=["star", "ring"],
        default=None,
        help="run each tensor configuration with these reductions, alternated on the same "
        "workers (default: the backend's choice, auto)",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        default=None,
        help="write the predicted speedups as an SVG chart (with --delay-ms: and each one with "
        "the measured link cost in place of the model's)",
    )
    args = parser.parse_args()
    delays = [0.0, *sorted({d for d in args.delay_ms or [] if d > 0})]

    root = Path(tempfile.mkdtemp(prefix="edge-bench-cluster-"))
    os.environ["EDGE_CONFIG_DIR"] = str(root / "coordinator")
    coordinator = KeyStore(root / "coordinator")
    coordinator.init_cluster(CLUSTER)
    keys = coordinator.cluster_keys(CLUSTER)
    # Each configuration its own workers: a worker holds one slice or share at a time.
    workers = [
        start_worker(args.package, coordinator, root, i, args.threads)
        for i in range(sum(args.workers) * len(args.modes))
    ]
    idle_rss = {proc.pid: peak_rss(proc.pid, "VmRSS") for proc, _ in workers}
    members = [m for _, m in workers]
    proxies = None
    if args.delay_ms is not None:
        coordinator_rate = args.coordinator_rate_mbps
        proxies = ProxyProcess(
            [parse_peer(m.endpoint.removeprefix("tcp://")) for m in members],
            rate_bps=args.rate_mbps * 1e6 / 8,
            coordinator_rate_bps=None if coordinator_rate is None else coordinator_rate * 1e6 / 8,
        )
        members = [replace(m, endpoint=e) for m, e in zip(members, proxies.endpoints)]
    package = open_package(args.package, verify="sizes")
    spec = package.spec
    prompt = [(7 * i + 100) % spec.vocab_size for i in range(args.prompt)]
    engines = {"one device": Engine(package, EngineConfig(threads=args.threads, max_context=512))}
    held: dict[str, list[int]] = {}
    proxied: dict[str, list[int]] = {}
    shapes: dict[str, tuple[str, int]] = {}
    unlinked: set[str] = set()  # the same engine as another name, its stages not linked
    reductions: dict[str, str] = {}  # the same engine as another name, another reduction
    first = 0
    for mode in args.modes:
        for k in args.workers:
            config = ClusterConfig(CLUSTER, distribute="always", mode=mode)
            placement, why = cluster_placement(package, config, members[first : first + k])
            assert placement is not None, why
            name = f"{mode}: here + {k} worker{'s' * (k > 1)}"
            ways = args.reductions if mode == "tensor" and args.reductions else [None]
            if ways != [None]:
                placement = with_reduction(placement, "ring" if "ring" in ways else "star")
            engine = Engine(
                package, EngineConfig(threads=args.threads, max_context=512, placement=placement)
            )
            for way in ways:
                named = name if way is None else f"{name}, {way}"
                engines[named] = engine
                held[named] = [proc.pid for proc, _ in workers[first : first + k]]
                proxied[named] = list(range(first, first + k))
                if way in (None, "star"):  # the latency model's shape (a star's round trips)
                    shapes[named] = (mode, k + 1)
                if way is not None:
                    reductions[named] = way
            if args.via_here and mode == "pipeline" and k > 1:
                via = f"{name}, via here"
                engines[via], held[via], proxied[via] = engines[name], held[name], proxied[name]
                unlinked.add(via)
            first += k
    by_engine = {id(engine): LinkTimer(engine) for engine in engines.values()}
    timers = {name: by_engine[id(engine)] for name, engine in engines.items()}
    wires = {name: proxy_bytes(proxies, proxied.get(name, [])) for name in engines}
    results: dict[tuple[str, float], list[Run]] = {}
    for engine in engines.values():  # warm-up
        run_once(engine, prompt, 4)
    started = time.monotonic()
    for _ in range(args.rounds):
        for delay in delays:
            if proxies is not None:
                proxies.set_delay(delay / 2e3)
            for name, engine in engines.items():
                if delay and name not in proxied:
                    continue  # no links to delay
                link_stages(engine, name not in unlinked)
                set_reduction(engine, reductions.get(name))
                run = run_once(engine, prompt, args.tokens, timers[name], wires[name])
                results.setdefault((name, delay), []).append(run)
    measured_s = time.monotonic() - started
    pings: dict[float, float] = {}
    if proxies is not None:
        for delay in delays:
            proxies.set_delay(delay / 2e3)
            with WorkerClient(members[0].endpoint, members[0].public, keys) as link:
                pings[delay] = statistics.median(link.ping() for _ in range(50))
        proxies.set_delay(0.0)

    print(f"CPU: {cpu_model()}, {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}")
    print(f"{args.package.name}: {args.prompt}-token prompt, {args.tokens} tokens, threads")
    print(
        f"{args.threads} per process, median of {args.rounds} alternated rounds "
        f"({measured_s:.0f} s)" + (", every link through the proxy" if proxies else "")
    )
    if proxies is not None and args.rate_mbps:
        coordinator_rate = args.coordinator_rate_mbps or args.rate_mbps
        print(f"ports: workers {args.rate_mbps:g} Mbit/s, this machine {coordinator_rate:g} Mbit/s")
    print()
    print(
        "| configuration | decode tok/s | vs one device | TTFT ms | payload bytes/token "
        "| wire bytes/token | reductions/token | wait ms/reduction | worker peak RSS MiB "
        "| worker RSS growth / predicted MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    base = statistics.median(r.tokens / r.decode_s for r in results["one device", 0.0])
    for name, engine in engines.items():
        runs = results[name, 0.0]
        tps = statistics.median(r.tokens / r.decode_s for r in runs)
        ttft = median_ms([r.ttft_s for r in runs])
        tokens_run = sum(r.tokens for r in runs)
        reductions = sum(r.reductions for r in runs)
        wire = f"{sum(r.wire for r in runs) / tokens_run:.0f}" if name in proxied else "-"
        if reductions:
            # per decoded token: hidden states [1, H] to and from each worker per reduction
            links = sum(len(s.loaded.links) for s in engine.segments if s.backend.name == "tensor")
            count = reductions / tokens_run
            payload = int(count * links * 2 * 4 * spec.hidden_size)
            per_reduction = f"{1e3 * sum(r.wait_s for r in runs) / reductions:.3f}"
            count_text = f"{count:.0f}"
        else:
            payload = sum(
                wire_bytes(s.start, s.end, len(package.manifest.parts), spec)
                for s in engine.segments
                if s.backend.name == "cluster"
            )
            count_text = per_reduction = "-"
        pids = held.get(name, [])
        rss = " / ".join(f"{peak_rss(pid) / 2**20:.0f}" for pid in pids)
        growth = " / ".join(
            f"{(peak_rss(pid) - idle_rss[pid]) / 2**20:.0f} of {b / 2**20:.0f}"
            for pid, b in zip(pids, held_bytes(engine, package))
        )
        print(
            f"| {name} | {tps:.1f} | {tps / base:.2f}x | {ttft:.0f} | {payload} | {wire} "
            f"| {count_text} | {per_reduction} | {rss or '-'} | {growth or '-'} |"
        )

    if proxies is not None:
        print(
            "\nmeasured through the delaying proxy vs TPI-LLM's latency model calibrated on "
            "this host: ms/token at RTT D = ms/token measured at 0 + round trips/token x D "
            "(the same for TTFT with the prompt's round trips); idle ping: a bare request/"
            "reply through the proxy (the second prediction uses its rise over RTT 0 as the "
            "RTT); ms per ms of RTT: what the step from the row above cost each round trip per "
            "ms (the model: 1), the idle ping's in brackets; round trip: each hop's request "
            "to reply, or a "
            "reduction's first request to last partial, at the coordinator (worker compute "
            "included); wire: TCP bytes through the proxies both ways (CurveZMQ frames, "
            "heartbeats included)\n"
        )
        print(
            "| configuration | RTT ms | idle ping ms | decode tok/s | ms/token | predicted "
            "| error | predicted, ping's RTT | error | round trips/token "
            "| ms per ms of RTT (ping's) | round trip ms | wait ms/reduction | TTFT ms "
            "| predicted TTFT | wire bytes/token |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for name in proxied:
            zero = results[name, 0.0]
            base_ms = statistics.median(1e3 * r.decode_s / r.tokens for r in zero)
            base_ttft = median_ms([r.ttft_s for r in zero])
            trips = per_token(zero)
            prompt_trips = per_token(zero, "prefill")
            previous: tuple[float, float] | None = None  # (delay, ms/token) of the row above
            for delay in delays:
                runs = results[name, delay]
                ms = statistics.median(1e3 * r.decode_s / r.tokens for r in runs)
                # What one more ms of RTT cost each round trip since the row above (the model: 1),
                # next to what it added to an idle ping through the proxy.
                slope = "-"
                if previous is not None:
                    step = delay - previous[0]
                    per_trip = (ms - previous[1]) / (trips * step)
                    ping_slope = 1e3 * (pings[delay] - pings[previous[0]]) / step
                    slope = f"{per_trip:.2f} ({ping_slope:.2f})"
                previous = (delay, ms)
                predicted = base_ms + trips * delay
                # the delay the proxy really added to a round trip (sleeps overshoot)
                realised = base_ms + trips * 1e3 * (pings[delay] - pings[0.0])
                predicted_ttft = base_ttft + prompt_trips * delay
                reductions = sum(r.reductions for r in runs)
                wait = (
                    f"{1e3 * sum(r.wait_s for r in runs) / reductions:.2f}" if reductions else "-"
                )
                round_trip = median_ms([t for r in runs for t, _ in r.trips.get("decode", [])])
                wire = sum(r.wire for r in runs) / sum(r.tokens for r in runs)
                print(
                    f"| {name} | {delay:g} | {1e3 * pings[delay]:.2f} | {1e3 / ms:.1f} "
                    f"| {ms:.1f} | {predicted:.1f} | {ms / predicted - 1:+.1%} "
                    f"| {realised:.1f} | {ms / realised - 1:+.1%} "
                    f"| {per_token(runs):.3g} | {slope} | {round_trip:.2f} | {wait} "
                    f"| {median_ms([r.ttft_s for r in runs]):.0f} | {predicted_ttft:.0f} "
                    f"| {wire:.0f} |"
                )

    # TPI-LLM's latency model from the measured parts.
    compute = 1 / base
    shard_s = shard_compute_s(package, args.threads)
    _, member = workers[0]  # direct, never through a proxy
    with WorkerClient(member.endpoint, member.public, keys) as link:
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

    def compute_part(mode: str, n: int) -> float:
        return head_s + shard_s / n if mode == "tensor" else compute

    def round_trips(mode: str, n: int) -> float:
        # a pipeline over here + n - 1 linked workers: n one-way trips a token
        return 2 * blocks if mode == "tensor" else (n / 2 if n > 1 else 0)

    # Where measured: the model's link term replaced by the measured one, R x exchange + what
    # the delay added to a token at this host (ms/token at D - at 0, the proxy's own cost out).
    # A delay that made the token faster measured this host's contention, not a link: left out.
    link_s: dict[tuple[str, int, float], float] = {}
    for name, (mode, n) in shapes.items():
        if proxies is None:
            continue
        zero = statistics.median(r.decode_s / r.tokens for r in results[name, 0.0])
        for delay in delays[1:]:
            at = statistics.median(r.decode_s / r.tokens for r in results[name, delay])
            if at > zero:
                link_s[mode, n, delay] = round_trips(mode, n) * exchange + at - zero
    rtts = sorted({*args.rtt_ms, *delays[1:]})
    print("| devices | mode | " + " | ".join(f"RTT {r:g} ms" for r in rtts) + " |")
    print("|---|---|" + "---|" * len(rtts))
    bars: list[tuple[str, float, float | None]] = []
    for n in sorted({k + 1 for k in args.workers}):
        for mode in ("pipeline", "tensor"):
            cells = []
            for rtt in rtts:
                t = compute_part(mode, n) + round_trips(mode, n) * (exchange + rtt / 1e3)
                cell = f"{1e3 * t:.1f} ({best / t:.2f}x)"
                measured = None
                if (mode, n, rtt) in link_s:
                    with_link = compute_part(mode, n) + link_s[mode, n, rtt]
                    measured = best / with_link
                    cell += f", measured link {1e3 * with_link:.1f} ({measured:.2f}x)"
                elif (mode, n) in shapes.values() and rtt in delays:
                    cell += ", measured link - (faster than at 0)"
                cells.append(cell)
                bars.append((f"{n} devices, {mode}, RTT {rtt:g} ms", best / t, measured))
            print(f"| {n} | {mode} | " + " | ".join(cells) + " |")
    if args.chart is not None:
        if proxies is None:
            from svg_chart import bar_chart

            title = f"{args.package.name}: predicted speedup over one device"
            args.chart.write_text(bar_chart(title, [(label, p) for label, p, _ in bars]))
        else:
            title = f"{args.package.name}: speedup over one device (separate devices)"
            args.chart.write_text(overlay_chart(title, bars))
    for engine in engines.values():
        engine.close()
    if proxies is not None:
        proxies.close()
    for proc, _ in workers:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
