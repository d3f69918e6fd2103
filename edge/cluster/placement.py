"""The coordinator's split of a model over the paired workers it finds: pipeline parallel
(contiguous ranges of parts) or tensor parallel (every block sharded), chosen from measured
numbers.

The choice is a prediction per decoded token, from each device's measured memory bandwidth
(a decode step reads every weight once) and each link's measured round trip:

    one device:  bytes / bandwidth_here
    pipeline:    sum over devices of (its range's bytes / its bandwidth) + one round trip
                 per remote range; one request computes on one device at a time
    tensor:      max over devices of (its share's bytes / its bandwidth) + the head here
                 + 2 x blocks x the slowest round trip (TPI-LLM's latency model)

By default (`mode="auto"`) the fastest feasible prediction wins, and a model that fits here is
not distributed unless a split is predicted faster; the reason says which and by how much.
Pipeline ranges are sized by each device's available memory (the head stays on this machine,
so only hidden states cross the network); tensor shares by bandwidth, or by memory where a
device could not hold its speed's share. A worker must hold the same package (its manifest's
sha256): a different one would compute garbage.

Each prediction also carries every device's predicted peak memory (`DeviceMemory`, said in
the reason and on the coordinator's log), with the single-device planner's memory model
(edge.planner.memory) for the context of a `PlanConfig` (default: a full cache): a worker's
process as it measured itself idle (interpreter and runtimes, `info()["idle_rss"]`), plus
its range as ONNX Runtime holds it in a `SliceRunner` (weights copied, the maps' pages a load
transient), or its tensor-parallel share (the slices copied, one block's maps while loading),
plus the KV pages of its blocks. A split where a device lacks the memory its share adds is
not feasible.

>>> config = ClusterConfig("home", peers=("192.168.1.20:5570",))
>>> placement, why = cluster_placement(package, config)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from dataclasses import replace as dataclass_replace
from itertools import pairwise
from typing import TYPE_CHECKING, Any

from edge.cluster.errors import ClusterError
from edge.errors import ConfigError
from edge.format import MANIFEST_FILE
from edge.package import Package
from edge.placement import DEFAULT_BACKEND, Placement, SegmentPlacement
from edge.planner.costs import ModelCosts
from edge.planner.memory import (
    DEFAULT_FOOTPRINT,
    Breakdown,
    ImportFootprint,
    Span,
    process_base,
    resident_breakdown,
)
from edge.planner.plan import PlanConfig
from edge.planner.tables import Context

if TYPE_CHECKING:
    from edge.cluster.client import WorkerClient
    from edge.cluster.keys import CurveKeys, Peer

DISTRIBUTE = ("auto", "always")
MODES = ("auto", "pipeline", "tensor")
# Of the memory a device reports available, the share its slice may take: the runtime, the
# KV cache and the page cache need the rest.
MEMORY_SHARE = 0.7
# Decode reads weights at about this fraction of the measured memory bandwidth (edge int4 on
# Qwen2.5-Coder, BENCHMARKS.md); it scales every device's compute alike.
DECODE_EFFICIENCY = 0.55
PINGS = 5
# A ping carrying this many bytes, against an empty one, measures a link's bandwidth.
LINK_PROBE_BYTES = 256 << 10
# Up to this many workers every subset is weighed (a slow link or a slow board left out can
# make the rest faster); beyond, the k workers of shortest round trip for each k.
SUBSET_WORKERS = 8
MEMORY_CHECKS = 8  # fastest subsets whose per-device memory is checked, at most
HERE = "this machine"
MiB = 1 << 20
REOPEN_S = 60.0  # a worker that received the package reopens its port within this time


@dataclass(frozen=True)
class ClusterConfig:
    """`name`: the cluster (keys from `edge cluster init`); `peers`: explicit HOST:PORT of
    workers, tried besides mDNS for `mdns_s` seconds; `distribute`: "auto" (only where a split
    is predicted faster, or the model does not fit here, and only over the workers that make
    it faster: a slow link or board is left out) or "always" (over every worker found, even
    where fewer would be faster); `mode`: "auto" (the
    faster prediction), "pipeline" or "tensor"; `local_share`: this machine computes a share
    too (pipeline; a tensor split always keeps one here); `send`: a worker waiting for a
    package (`edge cluster serve PKG --receive`) is sent this one first (a progress bar
    when `progress`); `interfaces`: browse mDNS on these (default: every interface but
    loopback and virtual bridges)."""

    name: str
    peers: tuple[str, ...] = ()
    mdns_s: float = 2.0
    interfaces: tuple[str, ...] = ()
    distribute: str = "auto"
    mode: str = "auto"
    local_share: bool = True
    send: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.distribute not in DISTRIBUTE:
            raise ConfigError(f"distribute={self.distribute!r}; one of {DISTRIBUTE}")
        if self.mode not in MODES:
            raise ConfigError(f"mode={self.mode!r}; one of {MODES}")
        if self.mdns_s < 0:
            raise ConfigError(f"mdns_s={self.mdns_s}; must be >= 0")
        object.__setattr__(self, "peers", tuple(self.peers))
        object.__setattr__(self, "interfaces", tuple(self.interfaces))


@dataclass(frozen=True)
class Member:
    """A paired worker that answered, holds this package, and has `memory` bytes to give;
    `rtt_s`: its measured round trip; `bandwidth_gbs`: its measured memory bandwidth (None:
    not measured, taken as this machine's); `idle_rss` and `runtimes`: its process's resident
    bytes before any slice and the runtimes they include, which its memory plan builds on."""

    node_id: str
    endpoint: str
    public: str
    memory: int
    rtt_s: float = 0.0
    bandwidth_gbs: float | None = None
    idle_rss: int | None = None  # its process before any slice (None: not reported)
    runtimes: tuple[str, ...] = ()  # the runtimes that idle RSS holds (imported at start)
    link_bps: float | None = None  # measured link bytes/s (None: not measured, not limiting)


def package_id(package: Package) -> str:
    """What workers report of their package: the sha256 of its manifest file."""
    return hashlib.sha256(package.files.read(MANIFEST_FILE)).hexdigest()


def find_members(package: Package, config: ClusterConfig) -> tuple[list[Member], list[str]]:
    """Paired workers found (mDNS and `config.peers`) holding `package`, with their measured
    round trips; and why others were left out."""
    from edge.cluster.client import WorkerClient
    from edge.cluster.discovery import browse, browse_addresses, parse_peers
    from edge.cluster.keys import KeyStore
    from edge.cluster.transport import LinkConfig, tcp_endpoint

    store = KeyStore()
    keys = store.cluster_keys(config.name)
    paired = {p.node_id: p for p in store.peers(config.name).values() if p.role == "worker"}
    found = parse_peers(config.peers)
    if config.mdns_s:
        found += browse(config.mdns_s, browse_addresses(config.interfaces))
    wanted, members, skipped = package_id(package), [], []
    link_config = LinkConfig(connect_timeout_s=2.0, request_timeout_s=10.0)
    for node in found:
        endpoint = tcp_endpoint(node.host, node.port)
        # mDNS names the node; an explicit peer is tried with every paired worker's key.
        candidates = [paired[node.node_id]] if node.node_id in paired else list(paired.values())
        for peer in candidates:
            if any(m.node_id == peer.node_id for m in members):
                continue
            try:
                with WorkerClient(endpoint, peer.public, keys, link_config, peer.name) as link:
                    info = link.info()
                    if "receiving" in info and config.send and info.get("package_id") is None:
                        _send(link, package, peer.name or peer.node_id, config.progress)
                if "receiving" in info and config.send:
                    info = _reopened(endpoint, peer, keys, wanted)
                with WorkerClient(endpoint, peer.public, keys, link_config, peer.name) as link:
                    rtt = statistics.median(link.ping() for _ in range(PINGS))
                    link_bps = measure_link(link, rtt)
            except ClusterError as exc:
                skipped.append(f"{endpoint} ({peer.node_id}): {exc}")
                continue
            if info.get("package_id") != wanted:
                skipped.append(f"{endpoint} ({peer.node_id}) holds another package")
                break
            memory = int(info.get("memory_budget") or info.get("memory_available") or 0)
            profile = info.get("profile") or {}
            bandwidth = profile.get("memory_bandwidth_gbs") if isinstance(profile, dict) else None
            idle, runtimes = info.get("idle_rss"), info.get("runtimes")
            members.append(
                Member(
                    peer.node_id,
                    endpoint,
                    peer.public,
                    memory,
                    rtt,
                    float(bandwidth)
                    if isinstance(bandwidth, (int, float)) and bandwidth > 0
                    else None,
                    idle if isinstance(idle, int) and idle > 0 else None,
                    tuple(str(r) for r in runtimes) if isinstance(runtimes, list) else (),
                    link_bps,
                )
            )
            break
    return members, skipped


def measure_link(link: WorkerClient, rtt_s: float) -> float | None:
    """Bytes/s a ping carrying `LINK_PROBE_BYTES` adds over an empty one's `rtt_s` (the worker
    reads and drops them); None where the difference is too small to measure (loopback)."""
    import numpy as np

    probe = np.zeros(LINK_PROBE_BYTES // 4, np.float32)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        link.request("ping", buffers=(probe,))
        times.append(time.perf_counter() - start)
    extra = statistics.median(times) - rtt_s
    return LINK_PROBE_BYTES / extra if extra > 1e-4 else None


def _send(link: WorkerClient, package: Package, name: str, progress: bool) -> None:
    """Send `package` to a worker waiting for one, with a progress bar over its bytes."""
    from tqdm.auto import tqdm

    from edge.cluster.transfer import send_package

    total = sum(entry.size for entry in package.manifest.files)
    done: dict[str, int] = {}
    with tqdm(
        total=total, unit="B", unit_scale=True, desc=f"send to {name}", disable=not progress
    ) as bar:

        def sent(path: str, offset: int, size: int) -> None:
            bar.update(offset - done.get(path, 0))
            done[path] = offset

        send_package(link, package.root, progress=sent)


def _reopened(endpoint: str, peer: Peer, keys: CurveKeys, wanted: str) -> dict[str, Any]:
    """The info of a worker that has just received the package and reopens its port to serve
    it (`edge cluster serve --receive`): retried for up to `REOPEN_S` seconds."""
    import time

    from edge.cluster.client import WorkerClient
    from edge.cluster.transport import LinkConfig

    deadline = time.monotonic() + REOPEN_S
    config = LinkConfig(connect_timeout_s=2.0, request_timeout_s=10.0)
    while True:
        try:
            with WorkerClient(endpoint, peer.public, keys, config, peer.name) as link:
                info = link.info()
            if info.get("package_id") == wanted and "receiving" not in info:
                return info
        except ClusterError:
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise ClusterError(f"{endpoint} did not come back serving the package it received")
        time.sleep(0.5)


def split_by_memory(weights: Sequence[int], capacities: Sequence[int]) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges of parts, one per device in order, each holding a share
    of the bytes proportional to its capacity (every device at least one part)."""
    n, k = len(weights), len(capacities)
    if not 0 < k <= n:
        raise ConfigError(f"cannot split {n} parts over {k} devices")
    total, room = sum(weights), sum(capacities)
    bounds, done, target = [0], 0, 0.0
    for j in range(k - 1):
        target += total * capacities[j] / room
        end = bounds[-1] + 1  # at least one part each
        while end < n - (k - 1 - j) and done + weights[end - 1] + weights[end] / 2 <= target:
            done += weights[end - 1]
            end += 1
        done += weights[end - 1]
        bounds.append(end)
    bounds.append(n)
    return list(pairwise(bounds))


@dataclass(frozen=True)
class Device:
    """A device as the split sees it: placement backend and options, memory it may give (for
    sizing ranges), measured bandwidth (bytes/s) and round trip from here (0 for this
    machine); for its memory plan, its name, the bytes it has `available`, and for a worker
    its process's idle RSS and the runtimes that holds (None, (): this machine, or unknown)."""

    backend: str
    options: tuple[tuple[str, str | int | float | bool], ...]
    capacity: int
    bandwidth: float
    rtt_s: float = 0.0
    name: str = HERE
    available: int = 0
    idle_rss: int | None = None
    runtimes: tuple[str, ...] = ()
    link_bps: float | None = None

    @property
    def endpoint(self) -> str | None:
        return str(dict(self.options).get("endpoint")) if self.backend != DEFAULT_BACKEND else None


@dataclass(frozen=True)
class DeviceMemory:
    """A device's predicted peak memory under a split, by what holds it (the single-device
    planner's `Breakdown`): `process` is a worker's idle RSS (its interpreter and runtimes)
    or this machine's libraries and tokenizer; `available`: what the device has besides."""

    name: str
    breakdown: Breakdown
    available: int = 0  # 0: unknown

    @property
    def peak(self) -> int:
        return self.breakdown.peak

    @property
    def fits(self) -> bool:
        """Its process runs already: what the split adds must fit in what is available."""
        return not self.available or self.peak - self.breakdown.process <= self.available

    def describe(self) -> str:
        return f"{self.name} {self.peak / MiB:.0f}"


@dataclass(frozen=True)
class Prediction:
    """A mode's predicted time per decoded token, the placement that realises it, and each
    device's predicted peak memory under it (this machine first)."""

    mode: str
    compute_s: float
    link_s: float
    placement: Placement | None
    memory: tuple[DeviceMemory, ...] = ()
    workers: tuple[str, ...] = ()  # the workers it uses, by name

    @property
    def token_s(self) -> float:
        return self.compute_s + self.link_s

    def describe(self) -> str:
        peaks = ", ".join(m.describe() for m in self.memory)
        over = f" over {len(self.workers)} worker(s)" if self.workers else ""
        return (
            f"{self.mode}{over} {1e3 * self.token_s:.1f} ms/token "
            f"({1e3 * self.compute_s:.1f} compute "
            f"+ {1e3 * self.link_s:.1f} link{f'; peak MiB: {peaks}' if peaks else ''})"
        )

    def device_memory(self, name: str) -> DeviceMemory:
        """The memory plan of the device named `name` (a worker's node id, or HERE)."""
        found = [m for m in self.memory if m.name == name]
        if not found:
            raise ConfigError(f"{self.mode}: no memory plan for {name!r}")
        return found[0]


def _devices(
    config: ClusterConfig, members: Sequence[Member], bandwidth_here: float
) -> list[Device]:
    from devices.memory_info import read_memory

    available = read_memory().available
    here = Device(
        DEFAULT_BACKEND, (), int(available * MEMORY_SHARE), bandwidth_here, available=available
    )
    out = [here]
    for m in members:
        options = (("cluster", config.name), ("endpoint", m.endpoint), ("server_key", m.public))
        bandwidth = 1e9 * m.bandwidth_gbs if m.bandwidth_gbs else bandwidth_here
        out.append(
            Device(
                "cluster",
                options,
                int(m.memory * MEMORY_SHARE),
                bandwidth,
                m.rtt_s,
                m.node_id,
                m.memory,
                m.idle_rss,
                m.runtimes,
                m.link_bps,
            )
        )
    return out


def predict_single(weights: Sequence[int], here: Device) -> Prediction | None:
    if sum(weights) > here.capacity:
        return None
    return Prediction("one device", _read_s(sum(weights[1:]), here), 0.0, None)


def predict_pipeline(
    weights: Sequence[int], devices: Sequence[Device], local_share: bool, hidden_bytes: int = 0
) -> Prediction:
    """Contiguous ranges by memory. With a share here the head stays here too: the logits
    ([V] floats a token, 200 KB for a 50k vocabulary) never cross the network, only hidden
    states ([H], `hidden_bytes`) do; without, the workers hold every part. One hop (there and
    back) per worker a token."""
    split = len(weights) - 1 if local_share else len(weights)
    used = (list(devices) if local_share else list(devices[1:]))[:split]
    ranges = split_by_memory(weights[:split], [max(d.capacity, 1) for d in used])
    segments = [SegmentPlacement(a, b, d.backend, d.options) for (a, b), d in zip(ranges, used)]
    compute = sum(_read_s(sum(weights[max(a, 1) : b]), d) for (a, b), d in zip(ranges, used))
    if split < len(weights):
        segments.append(SegmentPlacement(split, len(weights), DEFAULT_BACKEND))
        compute += _read_s(weights[-1], devices[0])
    workers = [d for d in used if d.backend != DEFAULT_BACKEND]
    link = sum(_hop_s(d, 2 * hidden_bytes) for d in workers)
    fits = all(sum(weights[a:b]) <= d.capacity for (a, b), d in zip(ranges, used))
    placement = Placement(tuple(segments)) if fits else None
    return Prediction("pipeline", compute, link, placement, workers=_names(workers))


def predict_tensor(
    weights: Sequence[int],
    kinds: Sequence[str],
    devices: Sequence[Device],
    max_shares: int,
    hidden_bytes: int = 0,
) -> Prediction | None:
    """Blocks sharded over this machine and the workers (by bandwidth, or by memory where a
    device could not hold its speed's share); embed and head here. Two star reductions per
    block: the slowest round trip, plus every worker's hidden states (`hidden_bytes`) there
    and back through this machine's link one after another."""
    blocks = [i for i, kind in enumerate(kinds) if kind == "block"]
    if not blocks or blocks != list(range(blocks[0], blocks[-1] + 1)) or len(devices) < 2:
        return None
    used = list(devices[:max_shares])
    if len(used) < 2:
        return None
    block_bytes = sum(weights[i] for i in blocks)
    rest = sum(weights) - block_bytes
    shares = [d.bandwidth for d in used]
    if any(block_bytes * s / sum(shares) > d.capacity for s, d in zip(shares, used)):
        shares = [max(d.capacity, 1) for d in used]
    if any(
        block_bytes * s / sum(shares) + (rest if i == 0 else 0) > d.capacity
        for i, (s, d) in enumerate(zip(shares, used))
    ):
        return None
    workers = ",".join(
        f"{dict(d.options)['endpoint']}|{dict(d.options)['server_key']}" for d in used[1:]
    )
    options = {
        "cluster": str(dict(used[1].options)["cluster"]),
        "workers": workers,
        "weights": ",".join(f"{s / max(shares):.3g}" for s in shares),
    }
    first, end = blocks[0], blocks[-1] + 1
    placement = (
        Placement.split(
            len(weights), [(0, DEFAULT_BACKEND), (first, "tensor", options), (end, DEFAULT_BACKEND)]
        )
        if end < len(weights)
        else None
    )
    compute = _read_s(weights[-1], used[0]) + max(
        _read_s(int(block_bytes * s / sum(shares)), d) for s, d in zip(shares, used)
    )
    reduction = max(d.rtt_s for d in used[1:]) + sum(
        _hop_s(d, 2 * hidden_bytes) - d.rtt_s for d in used[1:]
    )
    link = 2 * len(blocks) * reduction
    return Prediction("tensor", compute, link, placement, workers=_names(used[1:]))


def _read_s(nbytes: int, device: Device) -> float:
    return nbytes / (device.bandwidth * DECODE_EFFICIENCY)


def _hop_s(device: Device, nbytes: int) -> float:
    """One exchange with `device`: its round trip and `nbytes` through its link."""
    return device.rtt_s + (nbytes / device.link_bps if device.link_bps else 0.0)


def _names(devices: Sequence[Device]) -> tuple[str, ...]:
    return tuple(d.name for d in devices)


def device_subsets(devices: Sequence[Device]) -> list[list[Device]]:
    """This machine (first) with each non-empty set of the workers after it: more devices are
    not always faster (a pipeline adds a hop per device and computes one device at a time; a
    tensor split waits on its slowest link). Every subset up to `SUBSET_WORKERS` workers, else
    the nearest k for each k."""
    here, workers = devices[0], list(devices[1:])
    if len(workers) <= SUBSET_WORKERS:
        chosen = [
            [w for i, w in enumerate(workers) if mask >> i & 1]
            for mask in range(1, 1 << len(workers))
        ]
    else:
        nearest = sorted(workers, key=lambda w: w.rtt_s)
        chosen = [nearest[:k] for k in range(1, len(nearest) + 1)]
    return [[here, *subset] for subset in chosen]


# ---- memory per device ---------------------------------------------------------------------


def memory_context(package: Package, plan: PlanConfig | None = None) -> Context:
    """The sizes memory is predicted for: `plan`'s context (default: a full cache of the
    engine's default context, prompts in 256-token chunks), as the single-device planner's."""
    from edge.planner.costs import model_costs
    from edge.planner.tables import resolve

    manifest = package.manifest
    return resolve(manifest, model_costs(manifest), plan or PlanConfig())


def _worker_process(device: Device, runtime: str, footprint: ImportFootprint) -> int:
    """A worker's process before its slice: its idle RSS, which holds the runtimes it imported
    at start; a runtime it did not import (or a worker that did not say) as measured here."""
    imports = {"ort_cpu": footprint.onnxruntime, "tensor": footprint.llvmlite}
    if device.idle_rss is None:
        return footprint.base + imports[runtime]
    return device.idle_rss + (0 if runtime in device.runtimes else imports[runtime])


def _here_breakdown(
    costs: ModelCosts, placement: Placement, ctx: Context, footprint: ImportFootprint
) -> Breakdown:
    """This machine's segments on ONNX Runtime in the coordinator's `Model`, as the single-device
    planner predicts them, over its libraries and tokenizer."""
    spans = [
        Span(seg.start, seg.end, seg.backend)
        for seg in placement.segments
        if seg.backend == DEFAULT_BACKEND
    ]
    breakdown = resident_breakdown(
        costs,
        spans,
        tokens=ctx.tokens,
        decoded=ctx.decoded,
        chunk=ctx.chunk,
        charge_runtime=(DEFAULT_BACKEND,) if spans else (),
    )
    return dataclass_replace(breakdown, process=process_base(costs, footprint))


def pipeline_memory(
    package: Package,
    placement: Placement,
    devices: Sequence[Device],
    ctx: Context,
    footprint: ImportFootprint = DEFAULT_FOOTPRINT,
) -> tuple[DeviceMemory, ...]:
    """Each device's predicted peak under a pipeline `placement`: this machine's segments in
    its `Model`; each worker's range as its `SliceRunner` loads it (`slice_breakdown`) over its
    process (`_worker_process`)."""
    from edge.cluster.slice_runner import slice_breakdown
    from edge.planner.costs import model_costs

    costs = model_costs(package.manifest)
    out = [
        DeviceMemory(HERE, _here_breakdown(costs, placement, ctx, footprint), devices[0].available)
    ]
    by_endpoint = {d.endpoint: d for d in devices[1:]}
    for seg in placement.segments:
        if seg.backend != "cluster":
            continue
        device = by_endpoint[str(dict(seg.options)["endpoint"])]
        breakdown = slice_breakdown(costs, seg.start, seg.end, ctx.tokens, ctx.decoded, ctx.chunk)
        process = _worker_process(device, DEFAULT_BACKEND, footprint)
        out.append(
            DeviceMemory(
                device.name, dataclass_replace(breakdown, process=process), device.available
            )
        )
    return tuple(out)


def tensor_memory(
    package: Package,
    placement: Placement,
    devices: Sequence[Device],
    ctx: Context,
    footprint: ImportFootprint = DEFAULT_FOOTPRINT,
) -> tuple[DeviceMemory, ...]:
    """Each device's predicted peak under a tensor-parallel `placement`: the shares its options
    name (`TensorBackend.load`'s split), each as `share_breakdown` predicts it; a worker's over
    its process, this machine's beside its embedding and head in its `Model`."""
    from edge.cluster.shard_runner import block_weights, share_breakdown, share_size
    from edge.cluster.shards import ffn_unit, split_shares
    from edge.cluster.tensor_backend import parse_weights, parse_workers
    from edge.planner.costs import model_costs

    costs = model_costs(package.manifest)
    spec = package.manifest.spec
    segment = next(seg for seg in placement.segments if seg.backend == "tensor")
    options = dict(segment.options)
    workers = parse_workers(str(options["workers"]))
    first = package.manifest.parts[segment.start].block_index or 0
    end = first + segment.end - segment.start
    unit = ffn_unit(next(block_weights(package, first, first + 1)))
    shares = split_shares(
        spec, parse_weights(str(options.get("weights", "")), 1 + len(workers)), unit
    )
    jit = footprint.jit
    sizes = [share_size(package, share, first, end) for share in shares]
    here = _here_breakdown(costs, placement, ctx, footprint)
    local = share_breakdown(spec, sizes[0], ctx.tokens, ctx.chunk, jit)
    here = _combined(here, dataclass_replace(local, process=footprint.llvmlite))
    out = [DeviceMemory(HERE, here, devices[0].available)]
    by_endpoint = {d.endpoint: d for d in devices[1:]}
    for ref, size in zip(workers, sizes[1:]):
        device = by_endpoint[ref.endpoint]
        breakdown = share_breakdown(spec, size, ctx.tokens, ctx.chunk, jit)
        process = _worker_process(device, "tensor", footprint)
        out.append(
            DeviceMemory(
                device.name, dataclass_replace(breakdown, process=process), device.available
            )
        )
    return tuple(out)


def _combined(a: Breakdown, b: Breakdown) -> Breakdown:
    """Two loads in one process, one after the other: what they hold adds up, their load
    transients do not overlap (the larger counts), nor their steps' temporaries."""
    summed = {
        f.name: getattr(a, f.name) + getattr(b, f.name)
        for f in dataclass_fields(Breakdown)
        if f.name not in ("transient", "load_relief", "activations")
    }
    return Breakdown(
        **summed,
        transient=max(a.transient - a.load_relief, b.transient - b.load_relief),
        activations=max(a.activations, b.activations),
    )


def with_memory(
    prediction: Prediction,
    package: Package,
    devices: Sequence[Device],
    ctx: Context,
    footprint: ImportFootprint = DEFAULT_FOOTPRINT,
) -> Prediction:
    """`prediction` with each device's predicted peak memory; infeasible (no placement) where
    a device lacks the memory its share adds."""
    if prediction.placement is None:
        return prediction
    of_mode = pipeline_memory if prediction.mode == "pipeline" else tensor_memory
    memory = of_mode(package, prediction.placement, devices, ctx, footprint)
    placement = prediction.placement if all(m.fits for m in memory) else None
    return dataclass_replace(prediction, placement=placement, memory=memory)


# ---- the choice -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClusterPlan:
    """Every mode's prediction (time per token, each device's peak memory), the chosen one
    (None: run on this machine alone) and why."""

    single: Prediction | None
    candidates: tuple[Prediction, ...]
    chosen: Prediction | None
    why: str

    @property
    def placement(self) -> Placement | None:
        return None if self.chosen is None else self.chosen.placement

    def prediction(self, mode: str) -> Prediction:
        found = [c for c in self.candidates if c.mode == mode]
        if not found:
            raise ConfigError(f"no {mode} prediction (modes: {[c.mode for c in self.candidates]})")
        return found[0]


def _best_subset(
    predict: Callable[[Sequence[Device]], Prediction | None],
    devices: Sequence[Device],
    subsets: Sequence[Sequence[Device]],
    checked: Callable[[Prediction], Prediction],
) -> Prediction | None:
    """The fastest prediction over `subsets` whose devices hold their shares (memory checked in
    order of speed: a few candidates, not every subset); else the prediction over every
    device, to say why none fits."""
    options = [p for used in subsets if (p := predict(used)) is not None]
    for prediction in sorted(
        (p for p in options if p.placement is not None), key=lambda p: p.token_s
    )[:MEMORY_CHECKS]:
        prediction = checked(prediction)
        if prediction.placement is not None:
            return prediction
    every = predict(devices)
    return None if every is None else checked(every)


def cluster_placement(
    package: Package,
    config: ClusterConfig,
    members: Sequence[Member] | None = None,
    bandwidth_gbs: float | None = None,
    plan: PlanConfig | None = None,
) -> tuple[Placement | None, str]:
    """(the placement over this machine and the workers, why) or (None, why not).
    `bandwidth_gbs`: this machine's memory bandwidth (default: its measured profile); `plan`:
    the context memory is predicted for (see `plan_cluster`)."""
    chosen = plan_cluster(package, config, members, bandwidth_gbs, plan)
    return chosen.placement, chosen.why


def plan_cluster(
    package: Package,
    config: ClusterConfig,
    members: Sequence[Member] | None = None,
    bandwidth_gbs: float | None = None,
    plan: PlanConfig | None = None,
) -> ClusterPlan:
    """The split over this machine and the workers found (or `members`), with every mode's
    predictions. `plan`: the context each device's memory is predicted for (its max_context,
    context_tokens, prompt_tokens, prefill_chunk) and this machine's library footprint
    (default: a full cache of the default context; the planner's footprint constants)."""
    skipped: list[str] = []
    if members is None:
        members, skipped = find_members(package, config)
    why_skipped = f"; left out: {'; '.join(skipped)}" if skipped else ""
    if not members:
        return ClusterPlan(
            None, (), None, f"no paired worker of cluster {config.name!r} answered{why_skipped}"
        )
    if bandwidth_gbs is None:
        from devices.microbench import measured_profile

        bandwidth_gbs = measured_profile().memory_bandwidth_gbs
    parts = package.manifest.parts
    weights = [sum(t.nbytes for t in p.tensors) for p in parts]
    devices = _devices(config, members, 1e9 * bandwidth_gbs)
    single = predict_single(weights, devices[0])
    spec = package.manifest.spec
    ctx = memory_context(package, plan)
    footprint = (plan.footprint if plan else None) or DEFAULT_FOOTPRINT
    hidden = 4 * spec.hidden_size  # float32 hidden states of one token
    kinds = [p.kind for p in parts]
    predictors: dict[str, Callable[[Sequence[Device]], Prediction | None]] = {
        "pipeline": lambda used: predict_pipeline(weights, used, config.local_share, hidden),
        "tensor": lambda used: predict_tensor(weights, kinds, used, spec.num_heads, hidden),
    }
    # "always" splits over every device found; "auto" weighs which of them to use.
    subsets = [devices] if config.distribute == "always" else device_subsets(devices)
    candidates = []
    for mode, predict in predictors.items():
        if config.mode in ("auto", mode):
            best = _best_subset(
                predict,
                devices,
                subsets,
                lambda p: with_memory(p, package, devices, ctx, footprint),
            )
            if best is not None:
                candidates.append(best)
    feasible = sorted((c for c in candidates if c.placement is not None), key=lambda c: c.token_s)
    said = "; ".join(c.describe() for c in ([single] if single else []) + candidates)
    if not feasible:
        why = f"no {config.mode} split fits the devices' memory (predicted: {said}){why_skipped}"
        return ClusterPlan(single, tuple(candidates), None, why)
    best = feasible[0]
    if config.distribute == "auto" and single is not None and single.token_s <= best.token_s:
        why = (
            f"not distributed: the model fits here and one device is predicted fastest "
            f"({said}); distribute='always' to split anyway{why_skipped}"
        )
        return ClusterPlan(single, tuple(candidates), None, why)
    left = [m.node_id for m in members if m.node_id not in best.workers]
    unused = f"; not used: {', '.join(left)} (predicted no faster with them)" if left else ""
    names = ", ".join(best.workers)
    why = f"{best.mode} over this machine and {names} (predicted: {said}){unused}{why_skipped}"
    return ClusterPlan(single, tuple(candidates), best, why)
