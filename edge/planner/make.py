"""make_plan: parts x device profiles x memory budgets -> Plan. Pure: same inputs, same plan.

>>> from devices.profiles import profile_by_name
>>> plan = make_plan(manifest, [(profile_by_name("pi5"), "ort_cpu", None)])  # doctest: +SKIP
>>> plan.mode, round(plan.decode_tokens_per_s, 1), plan.peak_bytes
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from itertools import pairwise
from typing import Any

from edge.errors import BudgetTooSmallError, ConfigError
from edge.format import Manifest
from edge.placement import Placement
from edge.planner import memory, timing
from edge.planner.costs import ModelCosts, model_costs
from edge.planner.plan import (
    DEFAULT_DISK_GBS,
    STREAM_BACKEND,
    Device,
    DeviceUse,
    PartFallback,
    Plan,
    PlanConfig,
    SegmentPlan,
    StoredPacking,
    Streaming,
    Transfer,
)
from edge.planner.reasons import fallbacks
from edge.planner.search import (
    Priced,
    Segments,
    Share,
    _link,
    best_decode,
    best_prefill,
    pool_limit,
    pool_peak,
    price,
)
from edge.planner.stream import engine_stream_plan, stream_minimum, streamed_costs
from edge.planner.tables import Tables, build
from memory_sched.budget import format_size


def _devices(devices: Sequence[Device | Sequence[Any]]) -> tuple[Device, ...]:
    out = tuple(Device.of(d) for d in devices)
    if not out:
        raise ConfigError("make_plan needs at least one device")
    return out


def make_plan(
    manifest: Manifest,
    devices: Sequence[Device | Sequence[Any]],
    config: PlanConfig | None = None,
    refusals: Mapping[tuple[str, int], str] | None = None,
) -> Plan:
    """The best plan for `manifest` on `devices` (Device or (profile, backend, budget)).

    Resident when some split fits every budget (one device unless a split gains
    `config.min_split_gain`), else streamed from disk on the host CPU; raises
    `BudgetTooSmallError` stating the smallest budget that works when not even that fits.
    `refusals` are the backends' own answers, (backend, part index) -> why it refuses the part
    (`edge.planner.machine.backend_refusals`), or (device label, part index) for one device:
    a refused part is never placed there.

    Where nothing fits and no context window was chosen (`config.max_context`), the longest
    shorter one that fits (a multiple of 256 tokens, down to 256) is planned, with a note:
    what `edge run --memory-budget` does (`StreamConfig.sized_for`), the KV cache being the
    part of the floor a user most easily gives up.
    """
    config = config or PlanConfig()
    try:
        return _make_plan(manifest, devices, config, refusals)
    except BudgetTooSmallError as refused:
        if config.max_context is not None or manifest.quant.static:
            raise
        from edge.engine import DEFAULT_MAX_CONTEXT, MIN_DEFAULT_CONTEXT

        default = min(DEFAULT_MAX_CONTEXT, manifest.spec.max_position_embeddings)
        for context in range(default - 1 - (default - 1) % 256, MIN_DEFAULT_CONTEXT - 1, -256):
            try:
                plan = _make_plan(manifest, devices, replace(config, max_context=context), refusals)
            except BudgetTooSmallError:
                continue
            note = (
                f"context window {context} tokens, not {default}, so that its KV cache fits "
                "the budget (as edge run sizes it; --ctx N to choose)"
            )
            return replace(plan, notes=(*plan.notes, note))
        raise refused from None


def _make_plan(
    manifest: Manifest,
    devices: Sequence[Device | Sequence[Any]],
    config: PlanConfig,
    refusals: Mapping[tuple[str, int], str] | None,
) -> Plan:
    devs = _devices(devices)
    costs = model_costs(manifest)
    tables = build(manifest, costs, devs, config, refusals)
    problems: tuple[str, ...] = ()
    if config.mode != "streamed":
        decode = best_decode(tables, config)
        if decode is not None:
            prefill = best_prefill(tables, config, decode.segments)
            return _resident(tables, config, decode, prefill)
        problems = _resident_problems(tables)
        if config.mode == "resident":
            raise _too_small(manifest, tables, config, problems, streaming=False)
    return _streamed(manifest, tables, config, problems)


def evaluate(
    manifest: Manifest,
    devices: Sequence[Device | Sequence[Any]],
    placement: Placement,
    config: PlanConfig | None = None,
    prefill_placement: Placement | None = None,
) -> Plan:
    """The plan for a placement chosen by hand (each segment goes to the first device with its
    backend): predictions only, budgets reported in `notes` rather than enforced."""
    config = config or PlanConfig()
    devs = _devices(devices)
    costs = model_costs(manifest)
    placement.check(manifest)
    tables = build(manifest, costs, devs, config)
    decode = _segments(devs, placement)
    prefill = _segments(devs, prefill_placement) if prefill_placement else decode
    plan = _resident(
        tables, config, price(tables, decode, prefill), price(tables, decode, prefill, "prefill")
    )
    refused = [
        f"{phase}: {tables.devices[d].label} cannot run {tables.costs.parts[p].name}: {reason}"
        for phase, segments, table in (
            ("decode", decode, tables.decode_refusal),
            ("prefill", prefill, tables.prefill_refusal),
        )
        for s, e, d in segments
        for p in range(s, e)
        if (reason := table[d][p]) is not None
    ]
    # The placement's own backend options, not the devices' defaults.
    return replace(
        plan,
        notes=(*plan.notes, *refused[:8]),
        decode=_with_options(plan.decode, placement),
        prefill=_with_options(plan.prefill, prefill_placement or placement),
    )


def _with_options(
    segments: tuple[SegmentPlan, ...], placement: Placement
) -> tuple[SegmentPlan, ...]:
    return tuple(replace(s, options=p.options) for s, p in zip(segments, placement.segments))


def _segments(devices: tuple[Device, ...], placement: Placement) -> Segments:
    index = {}
    for i, d in enumerate(devices):
        index.setdefault(d.backend, i)
    missing = sorted({s.backend for s in placement.segments} - set(index))
    if missing:
        raise ConfigError(
            f"the placement uses backends {missing} that no device offers "
            f"(devices: {[d.label for d in devices]})"
        )
    return tuple((s.start, s.end, index[s.backend]) for s in placement.segments)


# ---- resident plans ------------------------------------------------------------------------


def _breakdowns(
    tables: Tables,
    decode: Segments,
    prefill: Segments,
    runtimes: Mapping[str, memory.RuntimeMemory] | None = None,
) -> list[memory.Breakdown]:
    """Exact per-device memory: each part once per device, maps shared by name counted once,
    each runtime's one-off cost on the first device using it, the process on the host.
    `runtimes`: how a backend holds its weights where not as `memory.RUNTIMES` says."""
    ctx, charged, mapped = tables.ctx, set(), set()
    out = []
    for d, device in enumerate(tables.devices):
        parts = sorted({p for s, e, x in (*decode, *prefill) if x == d for p in range(s, e)})
        spans = [memory.Span(s, e, device.backend) for s, e in _runs(parts)]
        charge = () if device.backend in charged or not spans else (device.backend,)
        charged.update(charge)
        breakdown = memory.resident_breakdown(
            tables.costs,
            spans,
            tokens=ctx.tokens,
            decoded=ctx.decoded,
            chunk=ctx.chunk,
            charge_runtime=charge,
            mapped_names=mapped,
            runtimes=runtimes,
        )
        if d == tables.host:
            breakdown = replace(
                breakdown, process=memory.process_base(tables.costs, tables.footprint)
            )
        out.append(breakdown)
    return out


def _runs(parts: list[int]) -> list[tuple[int, int]]:
    runs: list[tuple[int, int]] = []
    for p in parts:
        if runs and runs[-1][1] == p:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


def _pool_peak(tables: Tables, breakdowns: list[memory.Breakdown]) -> int:
    """The host process: every device sharing the host's memory."""
    pool = tables.devices[tables.host].profile.memory_pool
    return pool_peak(
        [
            Share(b.steady, b.transient, b.load_relief, b.activations + b.growth)
            for d, b in zip(tables.devices, breakdowns)
            if d.profile.memory_pool == pool
        ]
    )


def _segment_plans(tables: Tables, segments: Segments, phase: str) -> tuple[SegmentPlan, ...]:
    table = "decode_s" if phase == "decode" else "prefill_s"
    names = [p.name for p in tables.costs.parts]
    return tuple(
        SegmentPlan(
            s,
            e,
            tables.devices[d].label,
            tables.devices[d].backend,
            names[s] if e - s == 1 else f"{names[s]}..{names[e - 1]}",
            tables.span_sum(table, d, s, e),
            tables.devices[d].options,
        )
        for s, e, d in segments
    )


def _transfers(tables: Tables, segments: Segments, phase: str) -> tuple[Transfer, ...]:
    tokens = 1 if phase == "decode" else tables.ctx.prompt_tokens
    hidden = tables.costs.hidden_bytes_per_token
    out = []
    for (_, end, a), (_, _, b) in pairwise(segments):
        da, db = tables.devices[a], tables.devices[b]
        out.append(
            Transfer(
                phase,
                tables.costs.parts[end - 1].name,
                da.label,
                db.label,
                hidden,
                timing.transfer_seconds(tokens, hidden, _link(da, db)),
            )
        )
    return tuple(out)


def _stored_packing(
    tables: Tables, decode: Priced, prefill: Priced, heap: list[memory.Breakdown]
) -> StoredPacking | None:
    """The peaks of loads that store ONNX Runtime's packing (the first: the heap path's peak
    plus up to `STORE_BUILD_FACTOR` x the package bytes it packs) or map it (every later
    one), where parts run on its CPU backend in the host's memory."""
    pool = tables.devices[tables.host].profile.memory_pool
    on_cpu = {
        p
        for s, e, d in (*decode.segments, *prefill.segments)
        if tables.devices[d].backend == "ort_cpu" and tables.devices[d].profile.memory_pool == pool
        for p in range(s, e)
    }
    packed = sum(tables.costs.parts[p].weight_bytes for p in on_cpu)
    if not packed:
        return None
    stored = {"ort_cpu": memory.ORT_CPU_STORED}
    mapped = _pool_peak(tables, _breakdowns(tables, decode.segments, prefill.segments, stored))
    first = _pool_peak(tables, heap) + int(memory.STORE_BUILD_FACTOR * packed)
    return StoredPacking(mapped, first)


def _resident(tables: Tables, config: PlanConfig, decode: Priced, prefill: Priced) -> Plan:
    breakdowns = _breakdowns(tables, decode.segments, prefill.segments)
    uses = []
    for d, (device, breakdown) in enumerate(zip(tables.devices, breakdowns)):
        count = sum(e - s for s, e, x in decode.segments if x == d)
        count_prefill = sum(e - s for s, e, x in prefill.segments if x == d)
        uses.append(
            DeviceUse(
                device.label,
                device.profile.kind,
                device.profile.memory_pool,
                count,
                count_prefill,
                breakdown.peak,
                device.limit,
                breakdown.items(),
            )
        )
    notes = [f"over budget: {p}" for p in decode.over] if not decode.fits else []
    if prefill.segments != decode.segments:
        notes.append(
            "the prompt runs on a different placement than decode: "
            "plan.prefill_placement(); parts placed differently load on both devices"
        )
    growth = sum(b.growth for b in breakdowns)
    if growth:
        notes.append(
            f"OpenVINO grows {format_size(growth)} over {tables.ctx.decoded} decoded "
            "tokens (measured: its dynamic-shape kernels keep per-shape state); "
            "counted in the peaks"
        )
    ctx = tables.ctx
    return Plan(
        tables.costs.label,
        "resident",
        ctx.max_context,
        ctx.prompt_tokens,
        ctx.tokens,
        ctx.chunk,
        _segment_plans(tables, decode.segments, "decode"),
        _segment_plans(tables, prefill.segments, "prefill"),
        tuple(uses),
        _transfers(tables, decode.segments, "decode")
        + _transfers(tables, prefill.segments, "prefill"),
        fallbacks(tables, config, decode, prefill),
        prefill.seconds,
        1.0 / decode.seconds,
        _pool_peak(tables, breakdowns),
        None,
        tuple(notes),
        _stored_packing(tables, decode, prefill, breakdowns),
    )


def _resident_problems(tables: Tables) -> tuple[str, ...]:
    """Why the smallest single-device plan does not fit (for messages)."""
    best: Priced | None = None
    for d in range(len(tables.devices)):
        segments = ((0, tables.n, d),)
        if any(tables.decode_refusal[d][p] for p in range(tables.n)):
            continue
        priced = price(tables, segments)
        if best is None or sum(priced.peaks) < sum(best.peaks):
            best = priced
    return best.over if best is not None else ("no device can run every part",)


def _resident_minimum(tables: Tables) -> int | None:
    sizes = []
    for d in range(len(tables.devices)):
        if not any(tables.decode_refusal[d][p] for p in range(tables.n)):
            peak = price(tables, ((0, tables.n, d),)).peaks
            sizes.append(peak[d] + (peak[tables.host] if d != tables.host else 0))
    return min(sizes) if sizes else None


# ---- streamed plans ------------------------------------------------------------------------


def _stream_budget(tables: Tables) -> int:
    pool = tables.devices[tables.host].profile.memory_pool
    members = [d for d, x in enumerate(tables.devices) if x.profile.memory_pool == pool]
    return pool_limit(tables.devices, members)


def _too_small(
    manifest: Manifest,
    tables: Tables,
    config: PlanConfig,
    problems: tuple[str, ...],
    streaming: bool,
) -> BudgetTooSmallError:
    ctx = tables.ctx
    candidates = [m for m in (_resident_minimum(tables),) if m is not None]
    if streaming:
        candidates.append(
            stream_minimum(
                manifest,
                max_context=ctx.max_context,
                prefill_chunk=config.stream_prefill_chunk,
                max_window=config.stream_max_window,
                footprint=config.footprint,
            )
        )
    budget = _stream_budget(tables)
    minimum = min(candidates) if candidates else 0
    how = (
        "streaming blocks from disk"
        if streaming and minimum == candidates[-1]
        else "everything resident on one device"
    )
    return BudgetTooSmallError(
        f"no plan fits a budget of {format_size(budget)}: {'; '.join(problems)}; the "
        f"smallest budget that works is {format_size(minimum)} ({minimum} bytes, {how})",
        budget=budget,
        minimum=minimum,
    )


def _streamed(
    manifest: Manifest, tables: Tables, config: PlanConfig, problems: tuple[str, ...]
) -> Plan:
    host = tables.devices[tables.host]
    if host.profile.kind != "cpu":
        raise _too_small(
            manifest, tables, config, problems or ("no CPU to stream on",), streaming=False
        )
    ctx = tables.ctx
    budget = _stream_budget(tables)
    chunk = min(config.stream_prefill_chunk, ctx.max_context)
    try:
        plan = engine_stream_plan(
            manifest,
            tables.costs.tokenizer_bytes,
            budget,
            ctx.max_context,
            chunk,
            config.stream_max_window,
            config.footprint,
        )
    except BudgetTooSmallError:
        raise _too_small(manifest, tables, config, problems, streaming=True) from None
    disk = config.disk_gbs or DEFAULT_DISK_GBS
    streamed = streamed_costs(
        manifest,
        tables.costs,
        host.profile,
        plan,
        max_context=ctx.max_context,
        chunk=chunk,
        tokens=ctx.tokens,
        prompt_tokens=ctx.prompt_tokens,
        disk_gbs=disk,
        footprint=config.footprint,
    )
    return _streamed_plan(manifest, tables, config, problems, budget, streamed, chunk, disk)


def _streamed_plan(
    manifest: Manifest,
    tables: Tables,
    config: PlanConfig,
    problems: tuple[str, ...],
    budget: int,
    streamed: Any,
    chunk: int,
    disk: float,
) -> Plan:
    costs: ModelCosts = tables.costs
    host = tables.devices[tables.host]
    plan = streamed.plan
    n = costs.num_parts
    last = costs.parts[-1].name
    breakdown = streamed.breakdown
    use = DeviceUse(
        host.label.replace(host.backend, STREAM_BACKEND),
        host.profile.kind,
        host.profile.memory_pool,
        n,
        n,
        breakdown.peak,
        budget,
        breakdown.items(),
    )
    names = [u.name for u in plan.units]
    streaming = Streaming(
        budget,
        tuple(u for u in names if u in plan.policy.pinned),
        plan.policy.streamed,
        plan.policy.window,
        plan.unit_bytes,
        plan.pool_bytes,
        streamed.read_bytes_per_token,
        disk,
        stream_minimum(
            manifest,
            max_context=tables.ctx.max_context,
            prefill_chunk=chunk,
            max_window=config.stream_max_window,
            footprint=config.footprint,
        ),
    )
    label = use.device
    fallback = ()
    if plan.policy.streamed:
        first, final = plan.policy.streamed[0], plan.policy.streamed[-1]
        span = first if first == final else f"{first}..{final}"
        start = next(i for i, p in enumerate(costs.parts) if p.name == first)
        fallback = (
            PartFallback(
                "decode",
                start,
                start + len(plan.policy.streamed),
                span,
                host.label,
                f"streamed from disk: {format_size(budget)} holds "
                f"{len(streaming.pinned)} pinned parts and a window of "
                f"{plan.policy.window}",
            ),
        )
    notes = tuple(f"no resident plan fits: {p}" for p in problems)
    ctx = tables.ctx
    span_all = f"embed..{last}"
    options: tuple[tuple[str, int], ...] = (("budget", budget),)
    if config.stream_max_window is not None:
        options += (("max_window", config.stream_max_window),)
    return Plan(
        costs.label,
        "streamed",
        ctx.max_context,
        ctx.prompt_tokens,
        ctx.tokens,
        chunk,
        (SegmentPlan(0, n, label, STREAM_BACKEND, span_all, streamed.decode_s, options),),
        (SegmentPlan(0, n, label, STREAM_BACKEND, span_all, streamed.ttft_s, options),),
        (use,),
        (),
        fallback,
        streamed.ttft_s,
        1.0 / streamed.decode_s,
        breakdown.peak,
        streaming,
        notes,
    )
