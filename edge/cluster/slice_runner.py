"""Runs a contiguous range of a package's parts, [start, end), on ONNX Runtime: a worker's
slice of a model.

`edge.engine.Engine` runs a placement that covers every part, from token ids to logits; a
worker holds only a middle range, whose input may be hidden states and whose output may be
hidden states. This is the smallest runner for that, built from the engine's own pieces (the
`Backend` interface, `merge_models`, `KVCache`, `rope_tables`), with the KV cache allocated
only for the slice's blocks: a worker's memory is about its share of the weights plus its
share of the cache. Fixed-shape (NPU) packages are not supported here yet.
"""

from __future__ import annotations

import numpy as np

from edge import format as fmt
from edge.errors import ConfigError, ContextOverflowError
from edge.graph_merge import merge_models
from edge.kv_cache import KVCache
from edge.package import Package
from edge.planner.costs import ModelCosts
from edge.planner.memory import ORT_CPU_PINNED, Breakdown, Span, resident_breakdown
from edge.rope import rope_tables

DEFAULT_MAX_CONTEXT = 4096
DEFAULT_CHUNK = 256
LOGITS_MODES = ("last", "all")


def slice_breakdown(
    costs: ModelCosts, start: int, end: int, tokens: int, decoded: int, chunk: int
) -> Breakdown:
    """Predicted memory of parts [start, end) as a `SliceRunner` in a worker holds them, beyond
    the worker's process (which imported ONNX Runtime before it measured its idle RSS): one
    ONNX Runtime session (and one per prefill graph), which copies every weight from our maps,
    whose pages are dropped once it has loaded (a load transient); the KV pages `tokens`
    positions touch; the runtime's own memory. The single-device planner's model, with the
    float-matrix cost of a process that pins its mmap threshold (`edge.heap.pin_mmap_threshold`)."""
    return resident_breakdown(
        costs,
        [Span(start, end, "ort_cpu")],
        tokens=tokens,
        decoded=decoded,
        chunk=chunk,
        charge_runtime=("ort_cpu",),
        runtimes={"ort_cpu": ORT_CPU_PINNED},
    )


class SliceRunner:
    """Parts [start, end) of `package` as one ONNX Runtime session (plus one of its prefill
    graphs where the package ships them), with the KV cache of its blocks.

    Not thread-safe: one step at a time.
    """

    def __init__(
        self,
        package: Package,
        start: int,
        end: int,
        *,
        max_context: int | None = None,
        threads: int | None = None,
        chunk: int = DEFAULT_CHUNK,
        prefill_kernels: bool = True,
    ) -> None:
        from devices import registry
        from devices.backend import Resident, SegmentGraph

        manifest = package.manifest
        count = len(manifest.parts)
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start < end <= count):
            raise ConfigError(f"slice [{start}, {end}) is not a range of the {count} parts")
        if package.static_steps:
            raise ConfigError("fixed-shape (NPU) packages cannot run as cluster slices yet")
        if max_context is not None and max_context < 1:
            raise ConfigError(f"max_context={max_context}; must be >= 1")
        self.package, self.start, self.end = package, start, end
        self.parts = manifest.parts[start:end]
        spec = self.spec = package.spec
        self.max_context = min(max_context or DEFAULT_MAX_CONTEXT, spec.max_position_embeddings)
        self.chunk = max(1, min(chunk, self.max_context))
        blocks = {p.block_index for p in self.parts if p.kind == "block"}
        shape = (1, spec.num_kv_heads, self.max_context, spec.head_dim)
        _check_memory(2 * len(blocks) * 4 * int(np.prod(shape)), start, end)
        empty = np.zeros((0,), np.float32)  # blocks of other slices: never bound

        def layer(i: int) -> np.ndarray:
            return np.zeros(shape, np.float32) if i in blocks else empty

        layers = range(spec.num_layers)
        self.cache = KVCache(
            [layer(i) for i in layers], [layer(i) for i in layers], self.max_context
        )
        self.rope = rope_tables(spec, self.max_context)  # bound by address: kept alive here
        resident = Resident(self.cache.keys, self.cache.values, *self.rope)
        options: dict[str, int | bool] = {"spinning": False}
        if threads is not None:
            options["threads"] = threads
        self.backend = registry.create("ort_cpu", options)
        prefill = prefill_kernels and any(p.prefill_graph for p in self.parts)
        self.loaded = {}
        for kind in (False, True) if prefill else (False,):
            model = merge_models(
                [package.graph_bytes(p, None, kind) for p in self.parts], name=self.parts[0].name
            )
            graph = SegmentGraph(package, start, tuple(self.parts), model, None, kind)
            self.loaded[kind] = self.backend.load(self.backend.compile(graph), resident)
        executable = self.loaded[False].executable
        self.takes_ids = fmt.INPUT_IDS in executable.inputs
        self.gives_logits = fmt.LOGITS in executable.outputs
        self._in_name = fmt.INPUT_IDS if self.takes_ids else _hidden(executable.inputs)
        self._out_name = fmt.LOGITS if self.gives_logits else _hidden(executable.outputs)
        # Step buffers, bound by address; a step of S tokens uses their leading views.
        hidden = spec.hidden_size
        self._input = (
            np.zeros((1, self.chunk), np.int64)
            if self.takes_ids
            else np.zeros((1, self.chunk, hidden), np.float32)
        )
        self._output = np.zeros(
            (1, self.chunk, spec.vocab_size if self.gives_logits else hidden), np.float32
        )
        self._seqlens = np.zeros((1,), np.int32)
        self._total = np.zeros((), np.int32)
        self._positions = np.arange(self.chunk, dtype=np.int64)
        self._last = np.zeros((1,), np.int64)
        self._signature: dict[bool, tuple[int, int] | None] = dict.fromkeys(self.loaded)
        self.reached = 0  # the furthest position cached: the KV pages touched

    @property
    def position(self) -> int:
        return self.cache.position

    @property
    def input_shape(self) -> str:
        return "int64 [1, S]" if self.takes_ids else f"float32 [1, S, {self.spec.hidden_size}]"

    def step(self, inputs: np.ndarray, position: int, logits: str = "last") -> np.ndarray:
        """Run S tokens whose keys/values go at [position, position + S): the cache forgets
        everything from `position` on first (a rewind). `inputs`: int64 ids [1, S] or float32
        hidden [1, S, H]. Returns a view (valid until the next step) of hidden [1, S, H] or
        logits [1, K, V] (K = 1 for "last", S for "all")."""
        n = self._check(inputs, position, logits)
        self.cache.rewind(position)
        self._input[:, :n] = inputs
        self._seqlens[0] = position + n - 1
        self._total[()] = position + n
        self._last[0] = n - 1
        k = n if logits == "all" and self.gives_logits else 1
        prefill = n > 1 and True in self.loaded
        loaded = self.loaded[prefill]
        signature = (n, k)
        if self._signature[prefill] != signature:
            self._bind(prefill, n, k)
            self._signature[prefill] = signature
        self.package.check_mapped()
        self.backend.run(loaded, position, n)
        self.cache.position = position + n
        self.reached = max(self.reached, position + n)
        return self._output[:, :k] if self.gives_logits else self._output[:, :n]

    def _check(self, inputs: np.ndarray, position: int, logits: str) -> int:
        if logits not in LOGITS_MODES:
            raise ConfigError(f"logits={logits!r}; one of {LOGITS_MODES}")
        dtype = np.int64 if self.takes_ids else np.float32
        ndim = 2 if self.takes_ids else 3
        if (
            inputs.dtype != dtype
            or inputs.ndim != ndim
            or inputs.shape[0] != 1
            or (not self.takes_ids and inputs.shape[2] != self.spec.hidden_size)
        ):
            raise ConfigError(
                f"slice [{self.start}, {self.end}) takes {self.input_shape}, got "
                f"{inputs.dtype}{list(inputs.shape)}"
            )
        n = int(inputs.shape[1])
        if not 1 <= n <= self.chunk:
            raise ConfigError(f"a step of {n} tokens; this slice takes 1 to {self.chunk}")
        if self.takes_ids and (inputs.min() < 0 or inputs.max() >= self.spec.vocab_size):
            raise ConfigError(f"token ids outside the vocabulary [0, {self.spec.vocab_size})")
        if isinstance(position, bool) or not isinstance(position, int):
            raise ConfigError(f"position must be an integer, got {position!r:.40}")
        if not 0 <= position <= self.cache.position:
            raise ConfigError(
                f"position {position}: this slice's cache holds {self.cache.position} tokens "
                "(a step may rewind, not skip ahead)"
            )
        if position + n > self.max_context:
            raise ContextOverflowError(
                f"{position} + {n} tokens exceed this slice's context of {self.max_context}"
            )
        return n

    def _bind(self, prefill: bool, n: int, k: int) -> None:
        loaded = self.loaded[prefill]
        names = loaded.executable.inputs
        inputs: dict[str, np.ndarray] = {self._in_name: self._input[:, :n]}
        if fmt.SEQLENS_K in names:
            inputs[fmt.SEQLENS_K] = self._seqlens
            inputs[fmt.TOTAL_SEQUENCE_LENGTH] = self._total
        outputs: dict[str, np.ndarray] = {}
        if self.gives_logits:
            inputs[fmt.LOGITS_INDEX] = self._positions[:k] if k > 1 else self._last
            outputs[fmt.LOGITS] = self._output[:, :k]
        else:
            outputs[self._out_name] = self._output[:, :n]
        self.backend.bind(loaded, inputs, outputs)

    def reset(self) -> None:
        self.cache.rewind(0)

    def close(self) -> None:
        for loaded in self.loaded.values():
            self.backend.unload(loaded)
        self.loaded.clear()

    @property
    def nbytes(self) -> int:
        """The KV cache this slice reserves (its pages cost memory once written; the weights
        are ONNX Runtime's copies: see `predicted_growth`)."""
        return self.cache.nbytes

    @property
    def predicted_growth(self) -> int:
        """What holding and running this slice adds to its worker's peak RSS, at the context
        it has reached (see `slice_breakdown`)."""
        from edge.planner.costs import model_costs

        costs = model_costs(self.package.manifest)
        return slice_breakdown(costs, self.start, self.end, self.reached, 0, self.chunk).peak


def _hidden(names: frozenset[str] | tuple[str, ...]) -> str:
    return next(name for name in names if name.startswith("hidden."))


def _check_memory(kv_bytes: int, start: int, end: int) -> None:
    """A coordinator's request must not make this device allocate what it does not have."""
    from devices.memory_info import read_memory

    budget = read_memory().budget
    if kv_bytes > budget:
        raise ConfigError(
            f"slice [{start}, {end}): its KV cache needs {kv_bytes >> 20} MiB, but this device "
            f"has {budget >> 20} MiB available; ask for a smaller max_context"
        )
