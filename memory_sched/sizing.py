"""From a package and a memory budget to a window: the one call the engine needs.

Composes the pieces: units (blocks or halves), the budget split (pinned parts, KV cache,
activations, runtime), the window size that what is left allows, and the policy. Pure: no
I/O beyond what the caller passes in, so the planner can call it for `--dry-run`.

>>> plan = plan_stream(manifest, MemoryBudget.parse("300MB"), kv_cache=kv, activations=act)
>>> plan.policy.window, plan.window_bytes
>>> with plan.prefetcher(package.files) as prefetcher: ...
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from edge.errors import BudgetTooSmallError, ConfigError, PackageError
from edge.format import Manifest, ModelSpec, PartEntry
from edge.package_files import PackageFiles
from memory_sched.budget import DEFAULT_RUNTIME_OVERHEAD, MemoryBudget, format_size, window_bytes
from memory_sched.prefetcher import Prefetcher
from memory_sched.store import WeightStore, plan_layout
from memory_sched.units import HALVES, half_name, split_head, stream_units
from memory_sched.window import WindowPolicy, window_size


@dataclass(frozen=True)
class StreamPlan:
    """The units in execution order, which are pinned, and the window over the rest."""

    units: tuple[PartEntry, ...]
    policy: WindowPolicy
    unit_bytes: int  # one pool buffer: the largest streamed unit, aligned
    window_bytes: int  # what the budget leaves for the window (>= window * unit_bytes)
    pinned_bytes: int

    @property
    def streamed_units(self) -> tuple[PartEntry, ...]:
        return tuple(u for u in self.units if u.name not in self.policy.pinned)

    @property
    def pool_bytes(self) -> int:
        """Memory the prefetcher's buffers take."""
        return self.policy.window * self.unit_bytes if self.policy.streamed else 0

    def store(
        self, source: PackageFiles | str | os.PathLike[str], direct: bool = False, **options: object
    ) -> WeightStore:
        """A WeightStore over the streamed units (pinned ones are loaded elsewhere); `source`
        is the package's open files or its directory."""
        return WeightStore(source, self.streamed_units, direct, **options)  # type: ignore[arg-type]

    def prefetcher(
        self, source: PackageFiles | str | os.PathLike[str], direct: bool = False, **options: object
    ) -> Prefetcher:
        """A started Prefetcher for this plan; close it (or use `with`)."""
        return Prefetcher(self.store(source, direct, **options), self.policy)


def _pinned_units(units: tuple[PartEntry, ...], pinned: Iterable[str]) -> frozenset[str]:
    names = {u.name for u in units}
    chosen: set[str] = set()
    for name in pinned:
        halves = {half_name(name, h) for h in HALVES}
        if name in names:
            chosen.add(name)
        elif halves <= names:  # a whole block pinned while streaming halves
            chosen |= halves
        else:
            raise ConfigError(
                f"pinned part {name!r} is not a unit of this package; units: {sorted(names)}"
            )
    return frozenset(chosen)


def unique_bytes(parts: Iterable[PartEntry]) -> int:
    """Bytes of the tensors of `parts`, a tensor shared by two (a tied embedding) counted once."""
    seen: dict[tuple[str, int], int] = {}
    for part in parts:
        for tensor in part.tensors:
            seen[(tensor.file, tensor.offset)] = tensor.nbytes
    return sum(seen.values())


def plan_stream(
    manifest: Manifest,
    budget: MemoryBudget,
    *,
    kv_cache: int,
    activations: int,
    pinned: Iterable[str] = ("embed", "head"),
    split_blocks: bool = False,
    head_slices: int = 1,
    runtime_overhead: int = DEFAULT_RUNTIME_OVERHEAD,
    max_window: int | None = None,
) -> StreamPlan:
    """Size the window for `manifest` under `budget`; `BudgetTooSmallError` if one unit won't fit.

    `pinned` parts stay resident (default: the embedding and the head); `max_window` caps the
    window (two units already hide reads behind compute when a read is faster than a unit's
    compute; more only absorbs jitter). `head_slices` > 1 streams the head as that many
    slices of its output rows (`memory_sched.units.split_head`; it cannot then be pinned).
    """
    if max_window is not None and max_window < 1:
        raise ConfigError(f"max_window must be >= 1 or None, got {max_window}")
    units = stream_units(manifest.parts, split_blocks=split_blocks)
    if head_slices > 1:
        vocab = manifest.spec.vocab_size
        units = tuple(
            piece
            for u in units
            for piece in (split_head(u, vocab, head_slices) if u.kind == "head" else (u,))
        )
    pinned_names = _pinned_units(units, pinned)
    streamed = [u for u in units if u.name not in pinned_names]
    sizes = [plan_layout(u).buffer_bytes for u in streamed]
    unit = max(sizes, default=0)
    pinned_bytes = unique_bytes(u for u in units if u.name in pinned_names)
    left = window_bytes(
        budget,
        pinned=pinned_bytes,
        kv_cache=kv_cache,
        activations=activations,
        unit=unit,
        runtime_overhead=runtime_overhead,
    )
    window = max(window_size(left, sizes), 1)
    if max_window is not None:
        window = min(window, max_window)
    policy = WindowPolicy(tuple(u.name for u in units), window, pinned_names)
    return StreamPlan(units, policy, unit, left, pinned_bytes)


# The streamed engine's own accounting beside the window (`plan_budget_for`).
# The tokenizer lives in the same process: 4.3-4.4x its JSON size in RSS once the heap its
# parsing freed is trimmed (`edge.heap`; Qwen2.5's 11.4 MB file: 47 MiB, 148 MiB untrimmed), so
# large vocabularies get a larger allowance. Its load peak (~13x) comes before any weights.
TOKENIZER_RSS_FACTOR = 5
# Pages of the memory-mapped embedding that the rows of a long conversation touch.
EMBEDDING_ROWS_ALLOWANCE = 8 << 20


def kv_cache_bytes(spec: ModelSpec, max_context: int, itemsize: float = 4) -> int:
    """Keys and values of every layer for `max_context` tokens, `itemsize` bytes each
    (float32: 4, float16: 2, int8 with its scales: 1.0625)."""
    return int(2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * max_context * itemsize)


# Rows of logits a streamed step returns at most: one for a prompt chunk or a decoded token,
# a verification's drafted tokens + 1 under speculation, which drafts at most 15 tokens a pass
# on a streamed target (`edge.model.Model`). 64 rows of a 151,936-token vocabulary would be
# 37 MiB of a 300 MB budget.
LOGITS_ROWS = 16


def activation_bytes(spec: ModelSpec, chunk: int, max_context: int) -> int:
    """Peak float32 temporaries of one step of `chunk` tokens (the MLP's gate/up and the
    attention scores dominate), doubled for the copies numpy makes along the way, and the
    logits of at most `LOGITS_ROWS` positions twice: the engine's rows and what choosing from
    them takes (a verification's copy, the sampler's per-row scratch; measured on Qwen 1.5B
    at its minimum budget, 16 tokens with lookup drafts: peak RSS 99.6% of it with one)."""
    mlp = chunk * spec.intermediate_size * 2 * 4 * 2
    scores = spec.num_heads * chunk * max_context * 4 * 2
    logits = 2 * min(chunk, LOGITS_ROWS) * spec.vocab_size * 4
    return 2 * (mlp + scores) + logits


def plan_budget_for(
    manifest: Manifest,
    budget: MemoryBudget,
    *,
    tokenizer_bytes: int,
    max_context: int,
    chunk: int,
    runtime_overhead: int = DEFAULT_RUNTIME_OVERHEAD,
    max_window: int | None = None,
    parts: Sequence[PartEntry] | None = None,
    elsewhere_bytes: int = 0,
    kv_itemsize: float = 4,
) -> StreamPlan:
    """Pin the head and as many leading blocks as the budget holds beside a window of at least
    two streamed blocks (one computing, one being read); stream the rest. Where not even one
    block fits beside the pinned head, the head streams too, in slices of its output rows no
    larger than a block: the floor, at one more read of the head per token. The embedding is
    memory-mapped by the engine (only rows in use take memory), so it is planned out.

    `parts` (default: all) are the ones streamed from this plan, when other backends run the
    rest resident: their weights (`elsewhere_bytes`) count against the same budget.
    `kv_itemsize`: bytes of a cached key or value element (4: float32, 2: float16, 1.0625:
    int8 with its scales).

    Raises `BudgetTooSmallError` with the smallest budget that runs when even one streamed
    block does not fit beside the pinned parts, the KV cache and the activations.
    """
    kv = kv_cache_bytes(manifest.spec, max_context, kv_itemsize)
    act = activation_bytes(manifest.spec, chunk, max_context)
    overhead = (
        runtime_overhead
        + TOKENIZER_RSS_FACTOR * tokenizer_bytes
        + EMBEDDING_ROWS_ALLOWANCE
        + elsewhere_bytes
    )
    chosen = tuple(p for p in (manifest.parts if parts is None else parts) if p.kind != "embed")
    streamable = replace(manifest, parts=chosen)
    blocks = [p.name for p in chosen if p.kind == "block"]
    heads = tuple(p.name for p in chosen if p.kind == "head")

    def attempt(pinned_blocks: int, head_slices: int = 1) -> StreamPlan:
        return plan_stream(
            streamable,
            budget,
            kv_cache=kv,
            activations=act,
            pinned=(*(heads if head_slices == 1 else ()), *blocks[:pinned_blocks]),
            head_slices=head_slices,
            runtime_overhead=overhead,
            max_window=max_window,
        )

    try:
        return attempt(len(blocks))
    except BudgetTooSmallError:
        pass
    try:
        best = attempt(0)
    except BudgetTooSmallError as exc:
        slices = _head_slices(streamable)
        if not slices:  # nothing fits: say what a shorter context would need
            raise _with_context_hint(exc, manifest.spec, max_context, kv_itemsize) from None
        try:  # the floor: the head too streams, in slices no larger than a block
            return attempt(0, slices)
        except BudgetTooSmallError as floor:
            raise _with_context_hint(floor, manifest.spec, max_context, kv_itemsize) from None
    for n in range(1, len(blocks)):
        try:
            plan = attempt(n)
        except BudgetTooSmallError:
            break
        if plan.policy.window < min(2, len(blocks) - n):
            break
        best = plan
    return best


def _head_slices(manifest: Manifest) -> int:
    """How many slices of its output rows the head streams in so that none is larger than
    the largest block (the window's buffers stay the size they are); 0 when the head cannot
    be sliced (stored by columns) or is no larger than a block."""
    heads = [p for p in manifest.parts if p.kind == "head"]
    blocks = [plan_layout(p).buffer_bytes for p in manifest.parts if p.kind == "block"]
    if len(heads) != 1 or not blocks:
        return 0
    slices = -(-plan_layout(heads[0]).buffer_bytes // max(blocks))
    if slices < 2:
        return 0
    try:
        split_head(heads[0], manifest.spec.vocab_size, slices)
    except PackageError:
        return 0
    return slices


def _with_context_hint(
    exc: BudgetTooSmallError, spec: ModelSpec, max_context: int, itemsize: float
) -> BudgetTooSmallError:
    """`exc`, plus the longest context (a multiple of 256) whose smaller KV cache would let
    the budget run, when there is one: the cache is often the part a user can give up."""
    kv = kv_cache_bytes(spec, max_context, itemsize)
    for context in range(max_context - max_context % 256, 0, -256):
        smaller = kv_cache_bytes(spec, context, itemsize)
        if context < max_context and exc.minimum - kv + smaller <= exc.budget:
            hint = (
                f"; a context of {context} tokens fits (--ctx {context} / max_context="
                f"{context}: KV cache {format_size(smaller)} instead of {format_size(kv)})"
            )
            return BudgetTooSmallError(str(exc) + hint, budget=exc.budget, minimum=exc.minimum)
    return exc
