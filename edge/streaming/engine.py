"""A model larger than the memory it is given: TPI-LLM's sliding window over disk.

The head and as many leading blocks as the budget allows stay resident (*pinned*); the
embedding is memory-mapped (a token touches one row, so only rows in use take memory); the
other blocks stream through a window of preallocated buffers, read from disk
by `memory_sched`'s prefetcher while earlier blocks compute. Every part runs through the
numpy forward of `devices.spec_forward` with a kernel that reads the weights where they lie
(`StreamedLinear`), so memory is exactly: pinned weights + window buffers + KV cache +
activations + the runtime itself, which is what the budget is checked against up front.

The engine has `Engine`'s interface (prefill, decode, rewind, reset, position), so generation,
chat and speculative decoding run on it unchanged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from devices.spec_forward.numpy_forward import (
    block_forward,
    embed_forward,
    head_forward,
    rope_tables,
)
from devices.spec_forward.weights import PartWeights, part_weights
from edge.engine import (
    DEFAULT_MAX_CONTEXT,
    check_threads,
    checked_token,
    physical_cores,
    prefill_in_chunks,
    token_array,
)
from edge.errors import ConfigError, ContextOverflowError, StreamReadError
from edge.format import PartEntry
from edge.kv_cache import KVCache
from edge.package import Package
from edge.streaming.kernels import StreamedLinear
from edge.streaming.pinned import load_pinned
from memory_sched.budget import MemoryBudget, format_size
from memory_sched.prefetcher import Prefetcher
from memory_sched.sizing import StreamPlan, plan_budget_for


@dataclass(frozen=True)
class StreamConfig:
    """How to stream: the memory budget (bytes, or "300MB", "1.5GiB", "25%" of RAM), the
    KV cache length, the prefill chunk (bounds activation memory), threads, and whether to
    read with O_DIRECT (the page cache then holds none of the weights: the budget is real)."""

    budget: MemoryBudget
    max_context: int | None = None
    prefill_chunk: int = 64
    threads: int | None = None
    direct: bool = True
    max_window: int | None = 4
    # None: this environment's measured libraries (at least DEFAULT_RUNTIME_OVERHEAD).
    runtime_overhead: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.budget, MemoryBudget):
            object.__setattr__(self, "budget", MemoryBudget.parse(self.budget))
        if self.max_context is not None and self.max_context < 1:
            raise ConfigError(f"max_context={self.max_context}; must be >= 1")
        if self.prefill_chunk < 1:
            raise ConfigError(f"prefill_chunk={self.prefill_chunk}; must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads}; must be >= 1")
        if self.max_window is not None and self.max_window < 1:
            raise ConfigError(f"max_window={self.max_window}; must be >= 1 or None")


@dataclass
class StepTiming:
    """One step (a decode token or a prefill chunk): wall time, and the time spent waiting
    for reads, so compute = seconds - io_wait."""

    tokens: int
    seconds: float
    io_wait: float
    bytes_read: int


@dataclass
class StreamStats:
    steps: list[StepTiming] = field(default_factory=list)


class StreamedEngine:
    """Runs a package under a memory budget, streaming the blocks that do not fit.

    >>> engine = StreamedEngine(open_package("qwen-1.5b-int4"), StreamConfig("600MB"))
    >>> logits = engine.prefill([1, 2, 3])  # doctest: +SKIP
    """

    def __init__(self, package: Package, config: StreamConfig, progress: bool = True) -> None:
        self.package = package
        self.config = config
        spec = self.spec = package.spec
        self.max_context = min(
            config.max_context or DEFAULT_MAX_CONTEXT, spec.max_position_embeddings
        )
        self.chunk = min(config.prefill_chunk, self.max_context)
        check_threads(config.threads)
        self.threads = config.threads or physical_cores()
        self.plan = plan_budget(package, config, self.max_context, self.chunk)
        self.cache = KVCache.allocate(spec, self.max_context)
        self.rope = rope_tables(spec, self.max_context)
        self.linear = StreamedLinear(self.threads)
        self.parts = {p.name: p for p in package.manifest.parts}
        self.pinned = load_pinned(package, self.plan.policy.pinned, progress)
        embed = next(p for p in package.manifest.parts if p.kind == "embed")
        # The embedding's rows are read per step, never mapped: a run only touches the rows of
        # its tokens, and a file truncated under it is an error, not a fault.
        self.embed = part_weights(
            spec,
            embed,
            {t.name: package.rows(t) for t in embed.tensors},
            package.manifest.quantization,
        )
        self.prefetcher: Prefetcher | None = (
            self.plan.prefetcher(package.files, direct=config.direct)
            if self.plan.policy.streamed
            else None
        )
        self.stats = StreamStats()
        self._last_read: dict[str, object] = {}
        self._step_bytes = 0

    # ---- Engine's interface -------------------------------------------------------------------

    @property
    def position(self) -> int:
        return self.cache.position

    def reset(self) -> None:
        self.cache.rewind(0)
        if self.prefetcher is not None:
            self.prefetcher.reset()

    def rewind(self, position: int) -> None:
        self.cache.rewind(position)

    def cpu_threads(self) -> int | None:
        return self.threads

    def rounds_by_step(self) -> bool:
        return False  # one kernel path serves every step length

    def describe(self) -> str:
        return f"memory budget {format_size(self.config.budget.limit)}: {describe_plan(self.plan)}"

    def report(self) -> str | None:
        """The I/O-compute summary of the decode steps so far (None before any)."""
        if self.prefetcher is None or not any(s.tokens == 1 for s in self.stats.steps):
            return None
        from edge.streaming.report import summarize

        return f"streaming: {summarize(self, self.prefetcher.events()).line()}"

    def prefill(self, token_ids: list[int] | np.ndarray, all_logits: bool = False) -> np.ndarray:
        """Feed tokens in chunks; logits [S, V] for every position, or [1, V] for the last."""
        ids = token_array(token_ids, self.spec.vocab_size)
        self._check_room(len(ids))
        return prefill_in_chunks(
            ids, self.chunk, all_logits, lambda chunk, want: self._step(chunk, want, all_logits)
        )

    def verify(self, token_ids: list[int] | np.ndarray) -> np.ndarray:
        """Logits [S, V] for every fed token (one kernel path serves every step here)."""
        return self.prefill(token_ids, all_logits=True)

    def decode(self, token_id: int) -> np.ndarray:
        self._check_room(1)
        token = checked_token(token_id, self.spec.vocab_size)
        return self._step(np.array([token], np.int64), True, False)[0]

    def close(self) -> None:
        if self.prefetcher is not None:
            self.prefetcher.close()

    # ---- a step -------------------------------------------------------------------------------

    def _check_room(self, n: int) -> None:
        if n < 1:
            raise ValueError("no tokens to run")
        if self.position + n > self.max_context:
            raise ContextOverflowError(
                f"{self.position} tokens in context + {n} new exceed the context window of "
                f"{self.max_context} tokens; shorten the prompt or raise max_context"
            )

    def _step(self, ids: np.ndarray, want_logits: bool, all_logits: bool) -> np.ndarray | None:
        started = time.perf_counter()
        waited = 0.0
        position = self.cache.position
        x = embed_forward(self.embed, ids[None])
        try:
            for part in self.package.manifest.blocks:
                weights, wait = self._acquire(part)
                waited += wait
                try:
                    x = block_forward(
                        self.spec,
                        weights,
                        x,
                        self.cache.keys[part.block_index],
                        self.cache.values[part.block_index],
                        position,
                        self.rope,
                        self.linear,
                    )
                finally:
                    if part.name not in self.pinned:
                        self.prefetcher.release(part.name)
        except BaseException:
            # A step cut short leaves the window mid-cycle: restart it at the first block, so
            # the next step (the same one again, since the cache did not advance) can run.
            if self.prefetcher is not None:
                self.prefetcher.reset()
            raise
        self.cache.position = position + len(ids)
        logits = None
        if want_logits:
            index = np.arange(len(ids)) if all_logits else np.array([len(ids) - 1])
            logits = head_forward(self.spec, self.pinned["head"], x, index, self.linear)[0]
        self.stats.steps.append(
            StepTiming(
                len(ids), time.perf_counter() - started, waited, self._read_since_last_step()
            )
        )
        return logits

    def _acquire(self, part: PartEntry) -> tuple[PartWeights, float]:
        pinned = self.pinned.get(part.name)
        if pinned is not None:
            return pinned, 0.0
        start = time.perf_counter()
        try:
            loaded = self.prefetcher.acquire(part.name)
        except StreamReadError as exc:
            raise StreamReadError(f"block {part.name} could not be streamed: {exc}") from exc
        wait = time.perf_counter() - start
        if self._last_read.get(part.name) is not loaded.stats:  # a fresh read, not a kept one
            self._last_read[part.name] = loaded.stats
            self._step_bytes += loaded.stats.nbytes
        return part_weights(
            self.spec, part, loaded.tensors, self.package.manifest.quantization
        ), wait

    def _read_since_last_step(self) -> int:
        nbytes, self._step_bytes = self._step_bytes, 0
        return nbytes


def plan_budget(package: Package, config: StreamConfig, max_context: int, chunk: int) -> StreamPlan:
    """The window for this package under `config.budget` (see `plan_budget_for`)."""
    manifest = package.manifest
    tokenizer = package.files.size(manifest.tokenizer.file)
    return plan_budget_for(
        manifest,
        config.budget,
        tokenizer_bytes=tokenizer,
        max_context=max_context,
        chunk=chunk,
        runtime_overhead=_runtime_overhead(config),
        max_window=config.max_window,
    )


def _runtime_overhead(config: StreamConfig) -> int:
    if config.runtime_overhead is not None:
        return config.runtime_overhead
    from edge.planner.machine import import_footprint
    from edge.planner.memory import stream_allowance

    return stream_allowance(import_footprint())


def describe_plan(plan: StreamPlan) -> str:
    streamed = len(plan.policy.streamed)
    return (
        f"{len(plan.policy.pinned)} parts pinned ({format_size(plan.pinned_bytes)}), "
        f"{streamed} streamed through a window of {plan.policy.window} "
        f"({format_size(plan.pool_bytes)})"
        if streamed
        else f"all {len(plan.policy.pinned)} parts resident ({format_size(plan.pinned_bytes)})"
    )
