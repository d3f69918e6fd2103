"""The streamed path as a Backend: a segment whose weights do not all fit in memory.

TPI-LLM's sliding window over disk. The head and as many leading blocks as the budget allows
stay resident (*pinned*; under the smallest budgets the head too streams, in slices of its
output rows); the embedding's rows are read per step (a token touches one row);
the other blocks stream through a window of preallocated buffers, read from disk by
`memory_sched`'s prefetcher while earlier blocks compute. Every part runs through the numpy
forward of `devices.spec_forward` with a kernel that reads the weights where they lie
(`StreamedLinear`), so memory is exactly: pinned weights + window buffers + KV cache +
activations + the runtime itself, which is what the budget is checked against at load.

It lives in edge/ rather than devices/ because it composes devices/ (the forward, the
kernels) with memory_sched/ (the window), which must not import each other; `edge.backends`
finds it by name like any registered backend.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from devices.backend import (
    YES,
    Backend,
    Executable,
    Loaded,
    PackageSource,
    Resident,
    SegmentGraph,
    Support,
    spec_interface,
)
from devices.backends.numpy_reference import spec_support
from devices.spec_forward.numpy_forward import block_forward, embed_forward, head_forward
from devices.spec_forward.weights import (
    PartWeights,
    part_weights,
)
from edge import format as fmt
from edge.errors import ConfigError, StreamReadError
from edge.format import ModelSpec, PartEntry
from edge.package import Package
from edge.streaming.kernels import StreamedLinear
from edge.streaming.pinned import load_pinned
from memory_sched.budget import MemoryBudget, format_size
from memory_sched.prefetcher import Prefetcher
from memory_sched.sizing import StreamPlan, plan_budget_for, unique_bytes
from memory_sched.units import head_row_ranges

NAME = "streamed"


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


@dataclass(eq=False)
class StreamedExecutable(Executable):
    pass


@dataclass(eq=False)
class StreamedLoaded(Loaded):
    """A streamed segment's state: its plan, pinned weights, window and step timings."""

    plan: StreamPlan | None = None
    budget: int = 0
    pinned: dict[str, PartWeights] = field(default_factory=dict)
    embed: PartWeights | None = None
    prefetcher: Prefetcher | None = None
    linear: StreamedLinear | None = None
    resident: Resident | None = None
    stats: StreamStats = field(default_factory=StreamStats)
    inputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    outputs: Mapping[str, np.ndarray] = field(default_factory=dict)
    last_read: dict[str, object] = field(default_factory=dict)
    step_bytes: int = 0
    # A streamed head's slices: (unit, first row, end row, the spec typed to those rows).
    head_slices: list[tuple[PartEntry, int, int, ModelSpec]] = field(default_factory=list)


class StreamedBackend(Backend):
    """Runs a segment under a memory budget, streaming the blocks that do not fit.

    Options: `budget` (bytes the whole process may take), `threads`, `chunk` (the engine's
    longest step, which sizes the activations), `direct` (read with O_DIRECT so the page
    cache holds none of the weights: the budget is real), `max_window` (cap on streamed
    blocks in memory at once), `runtime_overhead` (bytes the libraries take; default: this
    environment's measured footprint), `progress` (a bar while pinned parts load),
    `activations` ("auto", "int16" or "fp32": how the int4 kernel multiplies; auto takes int16
    on CPUs with AVX-512 VNNI, 1.04-1.33x faster per token there, and fp32 elsewhere).
    """

    name: ClassVar[str] = NAME
    reads_graphs: ClassVar[bool] = False
    may_fall_back: ClassVar[bool] = False  # resident on the CPU would break the budget
    # numpy's attention reads a float16 or int8 cache as float32 (its rows rounded once, as
    # written)
    kv_dtypes: ClassVar[tuple[str, ...]] = ("float32", "float16", "int8")
    OPTIONS: ClassVar[Mapping[str, type | tuple[type, ...]]] = {
        "budget": int,
        "threads": int,
        "chunk": int,
        "direct": bool,
        "max_window": int,
        "runtime_overhead": int,
        "progress": bool,
        "activations": str,
    }

    @classmethod
    def check_options(cls, options: dict) -> dict:
        options = super().check_options(options)
        for key in ("budget", "chunk", "max_window", "runtime_overhead"):
            if key in options and int(options[key]) < (0 if key == "runtime_overhead" else 1):
                raise ConfigError(f"backend {cls.name!r} option {key}={options[key]}; too small")
        return options

    # ---- ahead of time ----------------------------------------------------------------------
    def supports(self, part: PartEntry, package: PackageSource) -> Support:
        return spec_support(part, package, "the streamed path")

    def compile(self, graph: SegmentGraph) -> StreamedExecutable:
        inputs, outputs = spec_interface(graph.parts)
        return StreamedExecutable(self.name, graph, inputs, outputs)

    # ---- run time ---------------------------------------------------------------------------
    def is_available(self) -> Support:
        return YES

    def load(self, executable: Executable, resident: Resident) -> StreamedLoaded:
        """Plan the window under the budget (`BudgetTooSmallError` says the smallest that
        works), read the pinned parts, start the prefetcher."""
        graph = executable.graph
        package = graph.package
        assert isinstance(package, Package)
        if "budget" not in self.options:
            raise ConfigError(f"backend {self.name!r} needs a memory budget (option 'budget')")
        plan = plan_segment(
            package,
            graph.parts,
            int(self.options["budget"]),
            max_context=resident.keys[0].shape[2],
            kv_itemsize=resident.keys[0].nbytes / resident.keys[0].size,
            chunk=int(self.options.get("chunk", 64)),
            runtime_overhead=self.options.get("runtime_overhead"),  # type: ignore[arg-type]
            max_window=int(self.options.get("max_window", 4)),
        )
        loaded = StreamedLoaded(executable, plan, int(self.options["budget"]), resident=resident)
        loaded.linear = StreamedLinear(
            self.options.get("threads"),  # type: ignore[arg-type]
            str(self.options.get("activations", "auto")),
        )
        loaded.head_slices = _head_slices(plan, package.manifest.spec)
        loaded.pinned = load_pinned(
            package, plan.policy.pinned, bool(self.options.get("progress", True))
        )
        embed = next((p for p in graph.parts if p.kind == "embed"), None)
        if embed is not None:
            # Rows are read per step, never mapped: a run only touches its tokens' rows, and a
            # file truncated under it is an error, not a fault.
            loaded.embed = part_weights(
                package.spec,
                embed,
                {t.name: package.rows(t) for t in embed.tensors},
                package.manifest.quant,
            )
        if plan.policy.streamed:
            loaded.prefetcher = plan.prefetcher(
                package.files, direct=bool(self.options.get("direct", True))
            )
        return loaded

    def bind(
        self, loaded: Loaded, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        assert isinstance(loaded, StreamedLoaded)
        loaded.inputs, loaded.outputs = dict(inputs), dict(outputs)

    def run(self, loaded: Loaded, position: int, size: int) -> None:
        assert isinstance(loaded, StreamedLoaded) and loaded.resident is not None
        started = time.perf_counter()
        graph = loaded.executable.graph
        spec = graph.package.manifest.spec
        resident, inputs = loaded.resident, loaded.inputs
        hidden_in = next((k for k in inputs if k.startswith("hidden.")), None)
        waited = 0.0
        x = inputs[hidden_in][:, :size] if hidden_in else None
        try:
            for part in graph.parts:
                if part.kind == "embed":
                    assert loaded.embed is not None
                    x = embed_forward(loaded.embed, inputs[fmt.INPUT_IDS][:, :size])
                elif part.kind == "block":
                    weights, wait = _acquire(loaded, part)
                    waited += wait
                    i = part.block_index
                    try:
                        x = block_forward(
                            spec,
                            weights,
                            x,
                            resident.keys[i],
                            resident.values[i],
                            position,
                            (resident.cos, resident.sin),
                            loaded.linear,
                        )
                    finally:
                        if part.name not in loaded.pinned:
                            loaded.prefetcher.release(part.name)  # type: ignore[union-attr]
                elif part.name in loaded.pinned:
                    logits = loaded.outputs[fmt.LOGITS]
                    index = inputs[fmt.LOGITS_INDEX]
                    logits[...] = head_forward(
                        spec, loaded.pinned[part.name], x, index, loaded.linear
                    )
                else:
                    waited += _streamed_head(loaded, x)
        except BaseException:
            # A step cut short leaves the window mid-cycle: restart it at the first block, so
            # the next step (the same one again: the cache did not advance) can run.
            if loaded.prefetcher is not None:
                loaded.prefetcher.reset()
            raise
        if graph.parts[-1].kind != "head":
            hidden = next(v for k, v in loaded.outputs.items() if k.startswith("hidden."))
            hidden[:, :size] = x
        nbytes, loaded.step_bytes = loaded.step_bytes, 0
        loaded.stats.steps.append(StepTiming(size, time.perf_counter() - started, waited, nbytes))

    def unload(self, loaded: Loaded) -> None:
        assert isinstance(loaded, StreamedLoaded)
        if loaded.prefetcher is not None:
            loaded.prefetcher.close()
        loaded.prefetcher, loaded.pinned, loaded.resident = None, {}, None
        loaded.inputs, loaded.outputs = {}, {}

    # ---- optional ---------------------------------------------------------------------------
    def reset(self, loaded: Loaded) -> None:
        assert isinstance(loaded, StreamedLoaded)
        if loaded.prefetcher is not None:
            loaded.prefetcher.reset()

    def summary(self, loaded: Loaded) -> str | None:
        assert isinstance(loaded, StreamedLoaded) and loaded.plan is not None
        return f"memory budget {format_size(loaded.budget)}: {describe_plan(loaded.plan)}"

    def report(self, loaded: Loaded) -> str | None:
        """The I/O-compute summary of the decode steps so far (None before any)."""
        assert isinstance(loaded, StreamedLoaded)
        if loaded.prefetcher is None or not any(s.tokens == 1 for s in loaded.stats.steps):
            return None
        from edge.streaming.report import summarize

        return f"streaming: {summarize(loaded, loaded.prefetcher.events()).line()}"


def _head_slices(plan: StreamPlan, spec: ModelSpec) -> list[tuple[PartEntry, int, int, ModelSpec]]:
    """The head's row slices the plan streams (`memory_sched.units.split_head`), each with
    its rows and the spec its weights are typed with; empty where the head is pinned."""
    units = [u for u in plan.streamed_units if u.kind == "head"]
    ranges = head_row_ranges(spec.vocab_size, len(units)) if units else []
    return [(u, a, b, replace(spec, vocab_size=b - a)) for u, (a, b) in zip(units, ranges)]


def _streamed_head(loaded: StreamedLoaded, x: np.ndarray) -> float:
    """The logits a slice of the head's output rows at a time, each slice read through the
    window like a block; returns the read wait."""
    assert loaded.prefetcher is not None
    logits, index = loaded.outputs[fmt.LOGITS], loaded.inputs[fmt.LOGITS_INDEX]
    waited = 0.0
    for unit, a, b, rows in loaded.head_slices:
        weights, wait = _acquire(loaded, unit, rows)
        waited += wait
        try:
            logits[..., a:b] = head_forward(rows, weights, x, index, loaded.linear)
        finally:
            loaded.prefetcher.release(unit.name)
    return waited


def _acquire(
    loaded: StreamedLoaded, part: PartEntry, spec: ModelSpec | None = None
) -> tuple[PartWeights, float]:
    """`part`'s weights, pinned or read through the window (typed with `spec`, default the
    package's), and the time spent waiting for the read."""
    pinned = loaded.pinned.get(part.name)
    if pinned is not None:
        return pinned, 0.0
    assert loaded.prefetcher is not None
    start = time.perf_counter()
    try:
        window = loaded.prefetcher.acquire(part.name)
    except StreamReadError as exc:
        raise StreamReadError(f"block {part.name} could not be streamed: {exc}") from exc
    wait = time.perf_counter() - start
    if loaded.last_read.get(part.name) is not window.stats:  # a fresh read, not a kept one
        loaded.last_read[part.name] = window.stats
        loaded.step_bytes += window.stats.nbytes
    package = loaded.executable.graph.package
    spec = spec or package.manifest.spec
    return part_weights(spec, part, window.tensors, package.manifest.quant), wait


def plan_segment(
    package: Package,
    parts: tuple[PartEntry, ...],
    budget: int,
    *,
    max_context: int,
    chunk: int,
    runtime_overhead: int | None = None,
    max_window: int | None = None,
    kv_itemsize: float = 4,
) -> StreamPlan:
    """The window for streaming `parts` of `package` under `budget` bytes: the parts of other
    segments (resident on their backends) count against it too, as does a KV cache of
    `kv_itemsize`-byte elements."""
    manifest = package.manifest
    names = {p.name for p in parts}
    elsewhere = unique_bytes(p for p in manifest.parts if p.name not in names and p.kind != "embed")
    return plan_budget_for(
        manifest,
        MemoryBudget(budget),
        tokenizer_bytes=package.files.size(manifest.tokenizer.file),
        max_context=max_context,
        chunk=chunk,
        runtime_overhead=_runtime_overhead(runtime_overhead),
        max_window=max_window,
        parts=parts,
        elsewhere_bytes=elsewhere,
        kv_itemsize=kv_itemsize,
    )


def _runtime_overhead(measured: int | None) -> int:
    if measured is not None:
        return measured
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
