"""Why each part that could have run somewhere faster did not: the planner explains itself.

For every part and phase, every device that would run that part alone faster than the chosen
one gets a reason: it cannot run it (no static int8 graph for an NPU...), moving the part there
breaks a budget (saying by how much), needs more segments than allowed, costs more in
transfers than it saves, or the split it makes does not gain enough to be worth it.
Consecutive parts with the same reason are reported as one range.
"""

from __future__ import annotations

from edge.planner.plan import PartFallback, PlanConfig
from edge.planner.search import Priced, Segments, price, supported
from edge.planner.tables import Tables


def _move(segments: Segments, part: int, device: int) -> Segments:
    """`segments` with `part` reassigned to `device`, neighbours merged."""
    owner = [d for s, e, d in segments for _ in range(s, e)]
    owner[part] = device
    out: list[tuple[int, int, int]] = []
    for i, d in enumerate(owner):
        if out and out[-1][2] == d:
            out[-1] = (out[-1][0], i + 1, d)
        else:
            out.append((i, i + 1, d))
    return tuple(out)


def _reason(
    tables: Tables,
    config: PlanConfig,
    phase: str,
    chosen: Priced,
    decode: Segments,
    part: int,
    device: int,
) -> str:
    refusals = tables.decode_refusal if phase == "decode" else tables.prefill_refusal
    refused = refusals[device][part]
    if refused:
        return refused
    moved = _move(chosen.segments, part, device)
    priced = price(tables, moved) if phase == "decode" else price(tables, decode, moved, "prefill")
    if not priced.fits:  # memory first: it holds however the parts are cut
        mine = [p for p in priced.over if p.startswith(tables.devices[device].label)]
        return "; ".join(mine or priced.over)
    if len(moved) > config.max_segments:
        return f"at most {config.max_segments} segments per phase (PlanConfig.max_segments)"
    if not supported(tables, moved, phase):
        return "the segment it would join has parts this device cannot run"
    if priced.seconds >= chosen.seconds:
        return "the transfers at its segment boundaries cost more than it saves"
    unit = "tok/s" if phase == "decode" else "s to first token"
    a, b = (
        (1 / priced.seconds, 1 / chosen.seconds)
        if phase == "decode"
        else (priced.seconds, chosen.seconds)
    )
    return (
        f"splitting does not pay: {a:.1f} vs {b:.1f} {unit}, under the "
        f"{config.min_split_gain:.0%} a split must gain (PlanConfig.min_split_gain)"
    )


def fallbacks(
    tables: Tables, config: PlanConfig, decode: Priced, prefill: Priced
) -> tuple[PartFallback, ...]:
    out: list[PartFallback] = []
    names = [p.name for p in tables.costs.parts]
    for phase, chosen in (("decode", decode), ("prefill", prefill)):
        table = tables.decode_s if phase == "decode" else tables.prefill_s
        owner = [d for s, e, d in chosen.segments for _ in range(s, e)]
        for device in range(len(tables.devices)):
            runs: list[tuple[int, int, str]] = []
            for part in range(tables.n):
                here = owner[part]
                if device == here or table[device][part] >= table[here][part]:
                    continue
                reason = _reason(tables, config, phase, chosen, decode.segments, part, device)
                if runs and runs[-1][1] == part and runs[-1][2] == reason:
                    runs[-1] = (runs[-1][0], part + 1, reason)
                else:
                    runs.append((part, part + 1, reason))
            label = tables.devices[device].label
            out.extend(PartFallback(phase, s, e, _span(names, s, e), label, r) for s, e, r in runs)
    return tuple(out)


def _span(names: list[str], start: int, end: int) -> str:
    return names[start] if end - start == 1 else f"{names[start]}..{names[end - 1]}"
