"""Streaming settings: a memory budget and how to honour it, turned into the engine's placement.

A streamed run is the one `Engine` running its parts on the `streamed` backend
(edge/streaming/backend.py); `StreamConfig` is the short way to ask for it.

>>> config = StreamConfig("600MB", max_context=2048)
>>> engine = Engine(package, config.engine_config(len(package.manifest.parts)))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from edge.engine_config import check_run_settings
from edge.errors import BudgetTooSmallError, ConfigError
from edge.kv_cache import KV_DTYPES, STREAMED_KV_DTYPE
from edge.placement import Placement
from memory_sched.budget import MemoryBudget, format_size

if TYPE_CHECKING:
    from edge.engine import EngineConfig
    from edge.package import Package
    from edge.runner import Runner
    from edge.streaming.backend import StreamedLoaded
    from memory_sched.sizing import StreamPlan


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamConfig:
    """How to stream: the memory budget (bytes, or "300MB", "1.5GiB", "25%" of RAM), the
    KV cache length, the prefill chunk (bounds activation memory), threads, and whether to
    read with O_DIRECT (the page cache then holds none of the weights: the budget is real).
    The KV cache is float16 by default: half the memory, so twice the context a budget
    holds, for keys and values rounded once as they are written (llama.cpp's default too);
    "int8" quarters it (llama.cpp's q8_0 cache: a float16 scale per 32 values); "float32"
    gives a resident run's arithmetic exactly."""

    budget: MemoryBudget
    max_context: int | None = None
    prefill_chunk: int = 64
    threads: int | None = None
    direct: bool = True
    max_window: int | None = 4
    # None: this environment's measured libraries (at least DEFAULT_RUNTIME_OVERHEAD).
    runtime_overhead: int | None = None
    # How the int4 kernel multiplies: "auto" (int16 where AVX-512 VNNI is, else fp32), or pinned.
    kernel_activations: str = "auto"
    kv_dtype: str = STREAMED_KV_DTYPE

    def __post_init__(self) -> None:
        if not isinstance(self.budget, MemoryBudget):
            object.__setattr__(self, "budget", MemoryBudget.parse(self.budget))
        check_run_settings(self.max_context, self.prefill_chunk, self.threads, self.kv_dtype)
        if self.max_window is not None and self.max_window < 1:
            raise ConfigError(f"max_window={self.max_window}; must be >= 1 or None")
        if self.kernel_activations not in ("auto", "int16", "fp32"):
            raise ConfigError(
                f"kernel_activations={self.kernel_activations!r}; one of auto, int16, fp32"
            )

    def backend_options(self) -> dict[str, int | bool | str]:
        """The `streamed` backend's options for these settings."""
        options: dict[str, int | bool | str] = {
            "budget": self.budget.limit,
            "direct": self.direct,
            "activations": self.kernel_activations,
        }
        if self.max_window is not None:
            options["max_window"] = self.max_window
        if self.runtime_overhead is not None:
            options["runtime_overhead"] = self.runtime_overhead
        return options

    def plan(self, package: Package) -> StreamPlan:
        """The window an engine with this config gets for `package`, without loading it
        (`BudgetTooSmallError` with the smallest budget that works)."""
        from edge.engine import DEFAULT_MAX_CONTEXT
        from edge.streaming.backend import plan_segment

        spec = package.spec
        max_context = min(self.max_context or DEFAULT_MAX_CONTEXT, spec.max_position_embeddings)
        return plan_segment(
            package,
            package.manifest.parts,
            self.budget.limit,
            max_context=max_context,
            chunk=min(self.prefill_chunk, max_context),
            runtime_overhead=self.runtime_overhead,
            max_window=self.max_window,
            kv_itemsize=KV_DTYPES[self.kv_dtype],
        )

    def sized_for(self, package: Package) -> StreamConfig:
        """This config with a context window that fits the budget, where the user chose none:
        the KV cache is the part of the floor most easily given up, so a budget too small for
        the default context gets the longest multiple of 256 tokens that fits, down to
        `MIN_DEFAULT_CONTEXT`, and the log says so. Below that, or with `max_context` given,
        the budget is refused as before (with the smallest budget that works)."""
        if self.max_context is not None:
            return self
        from edge.engine import MIN_DEFAULT_CONTEXT, default_context

        default = min(default_context(package.spec), package.spec.max_position_embeddings)
        try:
            fits = replace(self, max_context=default)
            fits.plan(package)
            return fits  # said once: the engine need not size the default again
        except BudgetTooSmallError as refused:
            for context in range(default - 1 - (default - 1) % 256, MIN_DEFAULT_CONTEXT - 1, -256):
                sized = replace(self, max_context=context)
                try:
                    sized.plan(package)
                except BudgetTooSmallError:
                    continue
                log.warning(
                    "memory budget %s: context window %d tokens, not %d, so that its KV cache "
                    "fits (max_context=N / --ctx N to choose; a larger budget for more)",
                    format_size(self.budget.limit),
                    context,
                    default,
                )
                return sized
            raise refused from None

    def engine_config(self, num_parts: int) -> EngineConfig:
        """Every part on the streamed backend, under this budget."""
        from edge.engine import EngineConfig
        from edge.streaming.backend import NAME

        return EngineConfig(
            max_context=self.max_context,
            prefill_chunk=self.prefill_chunk,
            threads=self.threads,
            placement=Placement.single(num_parts, NAME, self.backend_options()),
            prepacked_cache="use",  # a part falling back to ONNX Runtime must not build a store
            kv_dtype=self.kv_dtype,
        )


def streamed_state(runner: Runner) -> StreamedLoaded | None:
    """The streamed segment's state (plan, window, step timings) of a runner, if it streams."""
    from edge.streaming.backend import StreamedLoaded

    for loaded in runner.loaded_segments():
        if isinstance(loaded, StreamedLoaded):
            return loaded
    return None
