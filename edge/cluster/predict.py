"""What each way to run a model over devices costs a decoded token (TPI-LLM's latency model),
from each device's measured memory bandwidth (a decode step reads every weight once) and each
link's measured round trip and bandwidth:

    one device:  bytes / bandwidth_here
    pipeline:    sum over devices of (its range's bytes / its bandwidth) + one one-way trip
                 per boundary (consecutive workers hand the hidden states to each other:
                 here -> A -> B -> here is three trips, each half a round trip plus the
                 hidden states through the link); one request computes on one device at a time
    tensor:      max over devices of (its share's bytes / its bandwidth) + the head here
                 + 2 x blocks x the cheaper reduction of S x H hidden states (S = 1 for a
                 decoded token; the tensor backend's reduction="auto" weighs each step):
      star:      the slowest round trip + every worker's copy out through this machine's
                 link one after another + the last partial back (2 N S H 4 bytes on this
                 machine's link, both ways at once)
      ring:      here -> worker 1 -> ... -> worker N -> here: N + 1 one-way trips, each
                 carrying the S x H hidden states whole (the input on, the running sum after
                 it: at most 2 S H 4 bytes on any link), a worker-to-worker trip as measured
                 when the workers were linked (`reduction_s`). On equal links the star is
                 never slower (its copies out and back overlap; the ring's trips do not);
                 the ring wins only where this machine's link is slower than the workers'
                 links to each other, for long prompts: never for a decoded token on a home
                 LAN (measured side by side: bench/bench_cluster.py --reductions star ring).

Pipeline ranges are sized by each device's available memory (the head stays on this machine,
so only hidden states cross the network); tensor shares by bandwidth, or by memory where a
device could not hold its speed's share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Protocol

from edge.errors import ConfigError
from edge.placement import DEFAULT_BACKEND, Placement, SegmentPlacement
from edge.planner.memory import Breakdown

# Decode reads weights at about this fraction of the measured memory bandwidth (edge int4 on
# Qwen2.5-Coder, BENCHMARKS.md); it scales every device's compute alike.
DECODE_EFFICIENCY = 0.55
# Up to this many workers every subset is weighed (a slow link or a slow board left out can
# make the rest faster); beyond, the k workers of shortest round trip for each k.
SUBSET_WORKERS = 8
HERE = "this machine"
MiB = 1 << 20


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


class Timed(Protocol):
    """A link as measured from this machine: its round trip and bandwidth (None: too fast to
    measure, not limiting)."""

    @property
    def rtt_s(self) -> float: ...

    @property
    def link_bps(self) -> float | None: ...


@dataclass(frozen=True)
class LinkTimes:
    """A worker link's measured numbers, for `choose_reduction`."""

    rtt_s: float
    link_bps: float | None = None


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


def predict_single(weights: Sequence[int], here: Device) -> Prediction | None:
    if sum(weights) > here.capacity:
        return None
    return Prediction("one device", _read_s(sum(weights[1:]), here), 0.0, None)


def predict_pipeline(
    weights: Sequence[int], devices: Sequence[Device], local_share: bool, hidden_bytes: int = 0
) -> Prediction:
    """Contiguous ranges by memory. With a share here the head stays here too: the logits
    ([V] floats a token, 200 KB for a 50k vocabulary) never cross the network, only hidden
    states ([H], `hidden_bytes`) do; without, the workers hold every part. A token
    goes here -> first worker -> ... -> last worker -> here (`_chain_s`)."""
    split = len(weights) - 1 if local_share else len(weights)
    used = (list(devices) if local_share else list(devices[1:]))[:split]
    ranges = split_by_memory(weights[:split], [max(d.capacity, 1) for d in used])
    segments = [SegmentPlacement(a, b, d.backend, d.options) for (a, b), d in zip(ranges, used)]
    compute = sum(_read_s(sum(weights[max(a, 1) : b]), d) for (a, b), d in zip(ranges, used))
    if split < len(weights):
        segments.append(SegmentPlacement(split, len(weights), DEFAULT_BACKEND))
        compute += _read_s(weights[-1], devices[0])
    workers = [d for d in used if d.backend != DEFAULT_BACKEND]
    link = _chain_s(workers, hidden_bytes)
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
    device could not hold its speed's share); embed and head here. Two reductions per block,
    each the cheaper of a star and a ring of one token's hidden states (`hidden_bytes`):
    the tensor backend's `reduction="auto"` (`choose_reduction`)."""
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
    link = 2 * len(blocks) * min(reduction_s(used[1:], hidden_bytes).values())
    return Prediction("tensor", compute, link, placement, workers=_names(used[1:]))


def reduction_s(
    workers: Sequence[Timed], nbytes: int, hops: Sequence[Timed] | None = None
) -> dict[str, float]:
    """Seconds one reduction of `nbytes` of hidden states takes over the links to `workers`,
    by way (compute left out: the same in both, overlapped with the trips):

    - "star": the slowest round trip, every worker's copy out through this machine's link
      one after another, and the last partial back (the others come back meanwhile: a
      link carries both ways at once);
    - "ring": N + 1 one-way trips, each carrying `nbytes` whole: here to the first worker,
      `hops` (worker i to i + 1, as measured when they were linked; None: each the slower
      of the two workers' trips from here, its path crossing both their links), the last
      worker back here.

    So on equal links the star is never slower; the ring wins where this machine's link is
    slower than the workers' links to each other, by more than half a hop's round trip per
    hidden state's transfer: long prompts, this machine on a slow link."""
    star = max(w.rtt_s for w in workers) + sum(_hop_s(w, nbytes) - w.rtt_s for w in workers)
    star += max(_hop_s(w, nbytes) - w.rtt_s for w in workers)
    trips = [_hop_s(w, 2 * nbytes) / 2 for w in workers]
    if hops is None:
        between = [max(a, b) for a, b in pairwise(trips)]
    else:
        between = [_hop_s(h, 2 * nbytes) / 2 for h in hops]
    return {"star": star, "ring": trips[0] + sum(between) + trips[-1]}


def choose_reduction(
    workers: Sequence[Timed], nbytes: int, hops: Sequence[Timed] | None = None
) -> str:
    """The reduction predicted faster for a step of `nbytes` of hidden states ("star" on a
    tie: one round trip, and it needs no worker-to-worker links)."""
    if len(workers) < 2:
        return "star"  # a ring of one worker is the star
    times = reduction_s(workers, nbytes, hops)
    return "ring" if times["ring"] < times["star"] else "star"


def _read_s(nbytes: int, device: Device) -> float:
    return nbytes / (device.bandwidth * DECODE_EFFICIENCY)


def _hop_s(device: Timed, nbytes: int) -> float:
    """One exchange with `device`: its round trip and `nbytes` through its link."""
    return device.rtt_s + (nbytes / device.link_bps if device.link_bps else 0.0)


def _chain_s(workers: Sequence[Timed], hidden_bytes: int) -> float:
    """Here -> first worker -> ... -> last worker -> here, each stage handing its output to
    the next directly: one one-way trip per boundary. A trip to or from a worker is half its
    round trip plus the hidden states through its link; between two workers (a link nothing
    measured before they are introduced) the mean of their two trips."""
    if not workers:
        return 0.0
    trips = [_hop_s(d, 2 * hidden_bytes) / 2 for d in workers]
    return trips[0] + sum((a + b) / 2 for a, b in pairwise(trips)) + trips[-1]


def _names(devices: Sequence[Device]) -> tuple[str, ...]:
    return tuple(d.name for d in devices)


def device_subsets(devices: Sequence[Device]) -> list[list[Device]]:
    """This machine (first) with each non-empty set of the workers after it: more devices are
    not always faster (a pipeline adds a trip per device and computes one device at a time; a
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
