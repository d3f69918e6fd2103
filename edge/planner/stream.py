"""Streamed plans: the model under a budget too small to hold it, as the streamed backend runs it.

The pinning is exactly the streamed backend's: both call `memory_sched.sizing.plan_budget_for`
(the head and as many leading blocks as fit beside a window of at least two, the head itself
streamed in row slices where nothing fits beside it; the embedding memory-mapped, so only the
rows in use take memory). The engine admits a
budget by its own conservative accounting (a fixed runtime allowance); the planner predicts
the peak it will really reach with the measured constants of `memory.py`.

Throughput: every token computes every part and, unless the window holds all streamed blocks,
re-reads the streamed ones from disk; with a window of two or more the reads overlap compute.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from devices.profiles import DeviceProfile
from edge.errors import BudgetTooSmallError
from edge.format import PREFILL_INT8_SUFFIXES, Manifest
from edge.kv_cache import KV_DTYPES, STREAMED_KV_DTYPE
from edge.planner import memory
from edge.planner.costs import NBITS4, NBITS8, ModelCosts
from edge.planner.memory import ImportFootprint
from edge.planner.plan import STREAM_BACKEND
from edge.planner.timing import decode_seconds, prefill_seconds
from memory_sched.budget import MemoryBudget
from memory_sched.sizing import StreamPlan, activation_bytes, plan_budget_for, unique_bytes
from memory_sched.store import plan_layout


def engine_stream_plan(
    manifest: Manifest,
    tokenizer_bytes: int,
    budget: int,
    max_context: int,
    chunk: int,
    max_window: int | None,
    footprint: ImportFootprint | None = None,
) -> StreamPlan:
    """What the streamed backend decides for this budget (BudgetTooSmallError when nothing
    fits): the very function it calls, `memory_sched.sizing.plan_budget_for`, with the KV
    cache a streamed run allocates (`STREAMED_KV_DTYPE`)."""
    return plan_budget_for(
        manifest,
        MemoryBudget(budget),
        tokenizer_bytes=tokenizer_bytes,
        max_context=max_context,
        chunk=chunk,
        max_window=max_window,
        runtime_overhead=memory.stream_allowance(footprint),
        kv_itemsize=KV_DTYPES[STREAMED_KV_DTYPE],
    )


def stream_minimum(
    manifest: Manifest,
    *,
    max_context: int,
    prefill_chunk: int = 64,
    max_window: int | None = 4,
    footprint: ImportFootprint | None = None,
) -> int:
    """The smallest budget the streamed backend accepts (what its error message states)."""
    from edge.planner.costs import tokenizer_bytes

    try:
        engine_stream_plan(
            manifest,
            tokenizer_bytes(manifest),
            1,
            max_context,
            min(prefill_chunk, max_context),
            max_window,
            footprint,
        )
    except BudgetTooSmallError as exc:
        return exc.minimum
    return 1


@dataclass(frozen=True)
class StreamedCosts:
    plan: StreamPlan
    breakdown: memory.Breakdown
    read_bytes_per_token: int
    decode_s: float
    ttft_s: float


def _pinned_bytes(manifest: Manifest, pinned: frozenset[str]) -> int:
    """What load_pinned reads: pinned parts' tensors once each, prefill-graph rows excluded."""
    return unique_bytes(
        replace(
            p, tensors=tuple(t for t in p.tensors if not t.name.endswith(PREFILL_INT8_SUFFIXES))
        )
        for p in manifest.parts
        if p.name in pinned
    )


def streamed_costs(
    manifest: Manifest,
    costs: ModelCosts,
    profile: DeviceProfile,
    plan: StreamPlan,
    *,
    max_context: int,
    chunk: int,
    tokens: int,
    prompt_tokens: int,
    disk_gbs: float,
    footprint: ImportFootprint | None = None,
) -> StreamedCosts:
    """Predicted memory and speed of the streamed backend running `plan`."""

    spec = manifest.spec
    quantized = any(c in (NBITS4, NBITS8) for p in costs.parts for c in p.class_bytes)
    act_bound = activation_bytes(spec, chunk, max_context)
    breakdown = memory.Breakdown(
        weights=_pinned_bytes(manifest, plan.policy.pinned) + plan.pool_bytes,
        mapped=memory.mapped_embedding(costs, tokens),
        process=memory.process_base(costs, footprint, resident=False),
        runtime=memory.stream_runtime(quantized, footprint),
        kv_cache=memory.kv_resident(
            spec, spec.num_layers, tokens, itemsize=KV_DTYPES[STREAMED_KV_DTYPE]
        ),
        activations=int(memory.STREAM_ACTIVATION_FACTOR * act_bound),
    )
    streamed = plan.streamed_units
    rereads = bool(streamed) and not plan.policy.keeps_all
    read = sum(plan_layout(u).buffer_bytes for u in streamed) if rereads else 0
    read_s = read / (disk_gbs * 1e9)
    compute = sum(decode_seconds(p, profile, STREAM_BACKEND, tokens) for p in costs.parts)
    decode_s = max(compute, read_s) if plan.policy.window >= 2 else compute + read_s
    steps = -(-prompt_tokens // chunk)
    prompt = sum(
        prefill_seconds(p, profile, STREAM_BACKEND, prompt_tokens, chunk, False)
        for p in costs.parts
    )
    ttft = max(prompt, read_s * steps) if plan.policy.window >= 2 else prompt + read_s * steps
    return StreamedCosts(plan, breakdown, read, decode_s, ttft)
