"""A plan in words: segments per device for the prompt and for decode, predicted speed and peak
memory per device, and why parts fell back (what `edge plan` prints)."""

from __future__ import annotations

from edge.planner.plan import Plan, SegmentPlan
from memory_sched.budget import format_size


def _segments(title: str, segments: tuple[SegmentPlan, ...], unit: str) -> list[str]:
    lines = [f"{title}:"]
    for s in segments:
        seconds = f"{s.seconds * 1e3:.2f} ms {unit}"
        lines.append(f"  [{s.start:>3}, {s.end:>3})  {s.parts:<22} {s.device:<34} {seconds}")
    return lines


def describe(plan: Plan) -> str:
    """The human-readable plan."""
    lines = [
        f"model: {plan.model}",
        f"plan: {plan.mode}, context {plan.max_context} tokens, prompt {plan.prompt_tokens} "
        f"tokens in chunks of {plan.prefill_chunk}; memory predicted with "
        f"{plan.context_tokens} tokens in the cache",
        f"predicted: time to first token {plan.ttft_s * 1e3:.0f} ms, decode "
        f"{plan.decode_tokens_per_s:.1f} tokens/s, peak memory of the process "
        f"{format_size(plan.peak_bytes)}",
    ]
    if plan.stored_packing is not None:
        lines.append(_stored_line(plan))
    lines += _segments("prompt (prefill)", plan.prefill, "for the prompt")
    lines += _segments("decode", plan.decode, "per token")
    if plan.streaming is not None:
        s = plan.streaming
        rereads = (
            f"re-reads {format_size(s.read_bytes_per_token)} per token at {s.disk_gbs:.1f} GB/s"
            if s.read_bytes_per_token
            else "reads each once"
        )
        lines.append(
            f"streaming: budget {format_size(s.budget)}; {len(s.pinned)} parts "
            f"pinned, {len(s.streamed)} streamed through a window of {s.window} x "
            f"{format_size(s.unit_bytes)}; {rereads}; KV cache float16 (--kv-dtype); the "
            f"engine needs at least {format_size(s.engine_minimum)}"
        )
        if s.read_bytes_per_token:
            lines.append(
                "  a pass reads the streamed parts once however many drafted tokens it "
                "verifies: edge drafts from lookup here by default (no memory; each accepted "
                "token saves a pass; --draft none to decode one token a pass)"
            )
    lines.append("devices:")
    for use in plan.devices:
        if not use.breakdown:
            lines.append(f"  {use.device:<34} unused")
            continue
        parts = ", ".join(f"{k} {format_size(v)}" for k, v in use.breakdown)
        runs = "" if use.decode_parts or use.prefill_parts else ", runs no part"
        lines.append(
            f"  {use.device:<34} peak {format_size(use.peak_bytes)} of "
            f"{format_size(use.limit_bytes)} ({parts}{runs})"
        )
    if plan.transfers:
        lines.append("transfers:")
        lines += [
            f"  {t.phase} after {t.after}: {t.source} -> {t.target}, "
            f"{t.bytes_per_token} B/token, {t.seconds * 1e3:.2f} ms"
            for t in plan.transfers
        ]
    if plan.fallbacks:
        lines.append("fallbacks:")
        lines += [f"  {f}" for f in plan.fallbacks]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _stored_line(plan: Plan) -> str:
    stored = plan.stored_packing
    assert stored is not None
    mapped = format_size(stored.mapped_peak_bytes)
    first = format_size(stored.first_load_peak_bytes)
    if stored.stored:
        return (
            f"  ONNX Runtime's packed weights are stored in edge's cache for this package: "
            f"this load maps them, peak {mapped} (packing on the heap instead, "
            "--prepacked-cache off: the peak above)"
        )
    where = "" if stored.stored is None else " (none stored yet)"
    return (
        f"  with ONNX Runtime's packed weights stored in edge's cache{where}: the first load "
        f"packs and stores them, peak up to {first} (only where memory holds 4x the weights; "
        f"under a budget it packs on the heap), every later load maps them, peak {mapped}"
    )
