"""The search: every contiguous split of the parts over the devices, priced, the best kept.

A candidate is up to `max_segments` segments, each on one device, for decode; the cheapest
that fits every device's budget wins, but a split must beat the best single device by
`min_split_gain` (splitting costs transfers and a second runtime's memory, and predictions are
not exact). The prompt's placement is then chosen the same way given the decode placement
(a part placed differently for the prompt is loaded on both devices). Enumeration is cheap:
at most C(parts - 1, 2) cut pairs times the device sequences.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations, pairwise, product

from edge.planner import timing
from edge.planner.plan import Device, PlanConfig
from edge.planner.tables import Tables

Segments = tuple[tuple[int, int, int], ...]  # (start, end, device index)


@dataclass(frozen=True)
class Priced:
    segments: Segments
    seconds: float  # decode seconds per token, or the prompt's seconds
    peaks: tuple[int, ...]  # predicted peak bytes per device, alone
    over: tuple[str, ...]  # budget violations, in words; empty when it fits

    @property
    def fits(self) -> bool:
        return not self.over


def candidates(n: int, devices: Sequence[int], max_segments: int) -> Iterator[Segments]:
    """Every split of parts [0, n) into <= max_segments contiguous segments, neighbours on
    different devices."""
    for k in range(1, min(max_segments, n) + 1):
        for cuts in combinations(range(1, n), k - 1):
            bounds = (0, *cuts, n)
            for seq in product(devices, repeat=k):
                if any(a == b for a, b in pairwise(seq)):
                    continue
                yield tuple((bounds[i], bounds[i + 1], seq[i]) for i in range(k))


def supported(tables: Tables, segments: Segments, phase: str) -> bool:
    refusals = tables.decode_refusal if phase == "decode" else tables.prefill_refusal
    return all(refusals[d][p] is None for s, e, d in segments for p in range(s, e))


def _link(a: Device, b: Device) -> float | None:
    links = [x.profile.host_link_gbs for x in (a, b) if x.profile.host_link_gbs is not None]
    return min(links) if links else None


def seconds(tables: Tables, segments: Segments, phase: str) -> float:
    table = "decode_s" if phase == "decode" else "prefill_s"
    tokens = 1 if phase == "decode" else tables.ctx.prompt_tokens
    total = sum(tables.span_sum(table, d, s, e) for s, e, d in segments)
    hidden = tables.costs.hidden_bytes_per_token
    for (_, _, a), (_, _, b) in pairwise(segments):
        total += timing.transfer_seconds(
            tokens, hidden, _link(tables.devices[a], tables.devices[b])
        )
    return total


@dataclass(frozen=True)
class Share:
    """One device's predicted memory: steady bytes, and what comes on top at load time (a
    runtime's pre-packing transient, less what runtimes hold less before their first run) or
    at run time (activations, per-token growth)."""

    steady: int = 0
    transient: int = 0
    relief: int = 0
    running: int = 0
    used: bool = False

    @property
    def peak(self) -> int:
        return self.steady + max(self.transient - self.relief, self.running)


def shares(tables: Tables, decode: Segments, prefill: Segments = ()) -> tuple[Share, ...]:
    """Each device's share: parts placed there for either phase once each, the runtime's
    one-off cost on the first device using it, the process on the host."""
    from edge.planner import memory

    charged: set[str] = set()
    out = []
    for d, device in enumerate(tables.devices):
        mine = sorted({(s, e) for s, e, x in (*decode, *prefill) if x == d})
        parts = {p for s, e in mine for p in range(s, e)}
        steady = sum(tables.memory[d][p] for p in parts)
        steady -= sum(b for p, q, b in tables.shared[d] if p in parts and q in parts)
        share = Share()
        if parts:
            if device.backend not in charged:
                charged.add(device.backend)
                steady += memory.runtime_memory(device.backend).runtime_bytes
            share = Share(
                0,
                max(tables.transient(s, e, d) for s, e in mine),
                sum(tables.relief[d][p] for p in parts),
                memory.activation_bytes(tables.costs.spec, tables.ctx.chunk)
                + sum(tables.growth(s, e, d) for s, e in mine),
            )
        if d == tables.host:
            steady += memory.process_base(tables.costs, tables.footprint)
        # The host holds the process itself even when it runs no part.
        out.append(
            Share(
                steady,
                share.transient,
                share.relief,
                share.running,
                bool(parts) or d == tables.host,
            )
        )
    return tuple(out)


def pool_peak(members: Sequence[Share]) -> int:
    """Devices sharing memory, in load order: every load precedes the first run, so a
    device's load transient meets the load-time state of itself and the devices loaded before
    it; then the run-time extras all add up."""
    loading, worst = 0, 0
    for share in members:
        loading += share.steady - share.relief
        worst = max(worst, loading + share.transient)
    return max(worst, sum(s.steady + s.running for s in members))


def budget_problems(tables: Tables, parts: Sequence[Share]) -> tuple[str, ...]:
    """Each device within its limit, and each shared memory pool within its own."""
    from memory_sched.budget import format_size

    problems = []
    pools: dict[str, list[int]] = {}
    for d, device in enumerate(tables.devices):
        pools.setdefault(device.profile.memory_pool, []).append(d)  # type: ignore[arg-type]
        if parts[d].peak > device.limit:
            problems.append(
                f"{device.label}: needs {format_size(parts[d].peak)}, over its "
                f"{format_size(device.limit)} budget"
            )
    for members in pools.values():
        if sum(parts[d].used for d in members) < 2:
            continue  # one device's own check covers it
        limit = pool_limit(tables.devices, members)
        total = pool_peak([parts[d] for d in members])
        if total > limit:
            labels = ", ".join(tables.devices[d].label for d in members)
            problems.append(
                f"memory shared by {labels}: needs {format_size(total)}, over {format_size(limit)}"
            )
    return tuple(problems)


def pool_limit(devices: Sequence[Device], members: Sequence[int]) -> int:
    return min(
        max(devices[d].limit for d in members),
        min(devices[d].profile.memory_bytes for d in members),
    )


def price(
    tables: Tables, decode: Segments, prefill: Segments | None = None, phase: str = "decode"
) -> Priced:
    parts = shares(tables, decode, prefill or ())
    segments = decode if phase == "decode" else (prefill or decode)
    return Priced(
        segments,
        seconds(tables, segments, phase),
        tuple(s.peak for s in parts),
        budget_problems(tables, parts),
    )


def best_decode(tables: Tables, config: PlanConfig) -> Priced | None:
    """The decode split: the fastest that fits, unless the best single device that fits is
    within `min_split_gain` of it. None when nothing fits."""
    best: Priced | None = None
    single: Priced | None = None
    devices = range(len(tables.devices))
    for segments in candidates(tables.n, devices, config.max_segments):
        if not supported(tables, segments, "decode"):
            continue
        priced = price(tables, segments)
        if not priced.fits:
            continue
        if best is None or _better(priced, best):
            best = priced
        if len(segments) == 1 and (single is None or _better(priced, single)):
            single = priced
    if (
        single is not None
        and best is not None
        and best.seconds > single.seconds * (1 - config.min_split_gain)
    ):
        return single
    return best


def best_prefill(tables: Tables, config: PlanConfig, decode: Segments) -> Priced:
    """The prompt's placement given the decode one: the decode placement itself (no extra
    memory) unless another beats it by `min_split_gain` and fits with both loaded."""
    baseline = best = price(tables, decode, decode, "prefill")
    devices = range(len(tables.devices))
    for segments in candidates(tables.n, devices, config.max_segments):
        if segments == decode or not supported(tables, segments, "prefill"):
            continue
        priced = price(tables, decode, segments, "prefill")
        if (
            priced.fits
            and priced.seconds < baseline.seconds * (1 - config.min_split_gain)
            and _better(priced, best)
        ):
            best = priced
    return best


def _better(a: Priced, b: Priced) -> bool:
    """Faster; on a tie, fewer segments, then less memory."""
    if abs(a.seconds - b.seconds) > 1e-9 * max(a.seconds, b.seconds):
        return a.seconds < b.seconds
    return (len(a.segments), sum(a.peaks)) < (len(b.segments), sum(b.peaks))
