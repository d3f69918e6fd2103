"""The engine: a package's parts run as segments on backends, a KV cache, prefill and decode.

A `Placement` (edge/placement.py) says which backend runs which consecutive parts; none means
everything on ONNX Runtime's CPU backend. Consecutive parts on one backend run as one
executable (their graphs merged, see `graph_merge`): a run costs microseconds, but dozens per
token add up. Every buffer a step touches (token ids, KV cache, activations between segments,
logits) is allocated here once and handed to the backends by address (devices/backend.py), so
a decode step on CPU backends allocates nothing and copies nothing in Python, and activations
move between backends only at segment boundaries, through one shared buffer.

A backend that cannot load or compile its segment falls back to ONNX Runtime's CPU backend,
with the reason logged (logger "edge.engine") and kept in `engine.fallbacks`. A backend that
fails mid-generation raises `BackendError` naming it and the parts; `reset()` reloads it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from edge import format as fmt
from edge.engine_config import (  # noqa: F401  (edge.engine.EngineConfig is public)
    DEFAULT_MAX_CONTEXT,
    KV_MEMORY_SHARE,
    MIN_DEFAULT_CONTEXT,
    EngineConfig,
    default_context,
)
from edge.engine_recovery import DeviceRecovery, unload_quietly
from edge.errors import (
    BackendError,
    ConfigError,
    ContextOverflowError,
    PackageError,
)
from edge.heap import trim
from edge.kv_cache import KVCache, KVSnapshot
from edge.package import Package
from edge.placement import (
    Fallback,
    Placement,
    SegmentPlacement,
    part_bytes,
    session_cap,
)
from edge.rope import rope_tables
from edge.segments import Kind, Placed, Segment, SegmentLoader, exception_text
from edge.static_steps import HostAttention
from edge.step_inputs import (
    check_threads,
    checked_token,
    min_step_tokens,
    physical_cores,
    prefill_in_chunks,
    token_array,
)
from edge.tree_attention import (
    ATTENTION_BIAS,
    TreeFeed,
    check_parents,
    compact,
    require_tree_placement,
)

if TYPE_CHECKING:
    from devices.backend import Loaded

# devices/ is imported inside the functions that use it: devices.backend imports edge.format,
# which runs edge/__init__ (importing this module), so a module-level import here would make
# `import devices.backend` first in a process a circular import.

log = logging.getLogger("edge.engine")


class Engine(DeviceRecovery):
    """Runs a package token by token. Not thread-safe: one generation at a time.

    >>> engine = Engine(open_package("smollm2-pkg"))  # doctest: +SKIP
    >>> logits = engine.prefill([1, 2, 3])  # [1, vocab] for the last position
    >>> logits = engine.decode(42)  # [vocab]
    """

    def __init__(
        self, package: Package, config: EngineConfig | None = None, progress: bool = True
    ) -> None:
        self.package = package
        self.config = config = config or EngineConfig()
        self.progress = progress
        spec = self.spec = package.spec
        # Fixed-shape (NPU) packages: one set of executables per step length, a fixed cache.
        self.steps = package.static_steps
        static = package.manifest.quant.static
        self.max_context = (static.max_context if static else None) or min(
            config.max_context or default_context(spec), spec.max_position_embeddings
        )
        check_threads(config.threads)
        self.threads = config.threads or physical_cores()
        self.placement = config.placement or Placement.single(len(package.manifest.parts))
        self.placement.check(package.manifest)
        prompts = config.prefill_placement
        if prompts is not None and prompts != self.placement:
            prompts.check(package.manifest)
        else:
            prompts = None
        from edge.backends import backend_class

        # Only graphs round w8a8 activations on a one-token path of their own (see
        # `min_step_tokens`); spec forwards compute every step length alike.
        self.graphs = any(
            backend_class(s.backend).reads_graphs
            for p in (self.placement, prompts)
            if p is not None
            for s in p.segments
        )
        self.min_step = 1 if self.steps or not self.graphs else min_step_tokens(package.manifest)
        if config.tree_verify:
            require_tree_placement([s.backend for s in self.placement.segments], bool(self.steps))
        if config.uniform_steps and self.graphs and not self.steps and self._rounds_by_level():
            self.min_step = max(self.min_step, 2)
        self.chunk = (
            max(self.steps)
            if self.steps
            else max(min(config.prefill_chunk, self.max_context), self.min_step)
        )
        slots = self.max_context + self.min_step - 1  # a padded last step needs a spare slot
        self.cache = KVCache.allocate(spec, slots, self._kv_dtype(prompts))
        self.tree = TreeFeed(self.chunk, slots) if config.tree_verify else None
        # Bound by address: these arrays must live as long as the engine.
        self.rope = rope_tables(spec, slots)
        from devices.backend import Resident

        self.resident = Resident(self.cache.keys, self.cache.values, *self.rope)
        # Standard-op static graphs take their mask and rope rows from here, and leave the
        # cache update to it; their head computes every position's logits.
        self._host = (
            HostAttention(spec, self.steps, self.cache, self.rope)
            if static is not None and static.ops == "standard"
            else None
        )
        has_prefill = any(p.prefill_graph for p in package.manifest.parts)
        prompt_kind: Kind = (None, bool(has_prefill and config.prefill_kernels))
        kinds: list[Kind] = [(s, False) for s in self.steps] or [(None, False)]
        if prompt_kind[1] and not self.steps:
            kinds.append(prompt_kind)
        self.placements: dict[str, tuple[Placement, list[Kind]]] = {
            "decode": (self.placement, kinds)
        }
        if prompts is not None:
            # Only what prompts use: multi-token fixed shapes, or the prompt graphs.
            self.placements["prefill"] = (
                prompts,
                [(s, False) for s in self.steps if s > 1] or [prompt_kind],
            )
        # Where the package is large for the memory available, a segment's parts load as
        # several sessions, so only one group's file pages are resident at a time.
        self._session_cap = session_cap(
            sum(part_bytes(p) for p in package.manifest.parts), config.parts_per_session
        )
        self._loader = SegmentLoader(
            package,
            config,
            self.placements,
            self.resident,
            threads=self.threads,
            chunk=self.chunk,
            progress=progress,
            session_cap=self._session_cap,
        )
        self.fallbacks: list[Fallback] = self._loader.fallbacks
        self._broken: set[Placed] = set()  # placement segments that failed mid-run
        # Segments re-placed because their device left, with where they ran before (`readmit`).
        self._displaced: dict[Placed, SegmentPlacement] = {}
        self._next_readmit = 0.0
        with self._loader.loading_bar() as self._loader.bar:
            self._placed = {
                phase: [self._loader.place((phase, i)) for i in range(len(p.segments))]
                for phase, (p, _) in self.placements.items()
            }
        self._loader.bar = None
        self._assemble()
        self._settle_memory()
        chunk = self.chunk
        # Step buffers, bound by address; a step of S tokens uses their leading views.
        self._ids = np.zeros((1, chunk), np.int64)
        self._seqlens = np.zeros((1,), np.int32)
        self._total = np.zeros((), np.int32)
        self._positions = np.arange(chunk, dtype=np.int64)
        self._last = np.zeros((1,), np.int64)
        # Every token the cache holds, so a lost device's share can be rebuilt (`_recover`).
        self._history = np.zeros(slots, np.int64)
        # One buffer per boundary: segment i writes it, segment i + 1 reads it, no copy.
        longest = max(
            len(c)
            for c in (
                *self.variants.values(),
                *self.prefill_variants.values(),
                self.prefill_segments or (),
            )
        )
        self._hidden = [
            np.zeros((1, chunk, spec.hidden_size), np.float32) for _ in range(longest - 1)
        ]
        self._logits_last = np.zeros((1, 1, spec.vocab_size), np.float32)
        self._logits_all: np.ndarray | None = None

    # ---- building segments ------------------------------------------------------------------
    def _kv_dtype(self, prompts: Placement | None) -> str:
        """The config's KV element type, where every backend placed computes with it."""
        from edge.backends import backend_class

        dtype = self.config.kv_dtype
        refusing = sorted(
            {
                s.backend
                for p in (self.placement, prompts)
                if p is not None
                for s in p.segments
                if dtype not in backend_class(s.backend).kv_dtypes
            }
        )
        if refusing:
            raise ConfigError(
                f"kv_dtype={dtype!r}: backends {refusing} compute attention over float32 "
                "caches only; a float16 cache is for parts that all run on the streamed "
                "backend (edge.load(..., memory_budget=...))"
            )
        return dtype

    def _settle_memory(self) -> None:
        """After loading: give the heap pages the runtimes freed back (`edge.heap.trim`), then
        move what stays onto huge pages."""
        trim()
        if self.config.huge_pages:
            from edge.huge_pages import collapse_resident

            collapse_resident()

    def _assemble(self) -> None:
        """The run lists, in part order, from the per-placement-segment executables."""

        def chain(phase: str, kind: Kind) -> list[Segment]:
            return [s for placed in self._placed[phase] for s in placed[kind]]

        self.variants = {step: chain("decode", (step, False)) for step in (self.steps or (None,))}
        self.segments = next(iter(self.variants.values()))
        phase = "prefill" if "prefill" in self._placed else "decode"
        prompt_kinds = self.placements[phase][1]
        # Multi-token steps: prompt graphs where the package has them, else the step graphs,
        # on the prompt placement when it has its own.
        self.prefill_segments = chain(phase, (None, True)) if (None, True) in prompt_kinds else None
        self.prefill_variants = (
            {kind[0]: chain(phase, kind) for kind in prompt_kinds if not kind[1]}
            if phase == "prefill"
            else {}
        )
        self._link_stages()

    def _link_stages(self) -> None:
        """Tell each executable which one runs right after it in every run list
        (`Backend.chain`; None where that differs between lists or nothing follows), so
        devices that can pass activations to each other directly do: cluster workers."""
        runs = [*self.variants.values(), *self.prefill_variants.values()]
        runs.append(self.prefill_segments or [])
        after: dict[int, Loaded | None] = {}
        for run in runs:
            for segment, successor in zip(run, [*run[1:], None]):
                nxt = None if successor is None else successor.loaded
                key = id(segment.loaded)
                after[key] = nxt if after.get(key, nxt) is nxt else None
        for segment in self._distinct():
            segment.backend.chain(segment.loaded, after.get(id(segment.loaded)))

    # ---- the public API ---------------------------------------------------------------------
    @property
    def position(self) -> int:
        """How many tokens the KV cache holds."""
        return self.cache.position

    def reset(self) -> None:
        """Empty the cache; after a backend failure, also reload the backend that failed."""
        if self._broken:
            for phase, index in sorted(self._broken):
                for segments in self._placed[phase][index].values():
                    for segment in segments:
                        unload_quietly(segment)
                self._placed[phase][index] = self._loader.place((phase, index), reloading=True)
            self._broken.clear()
            self._assemble()
        for segment in self._distinct():
            segment.backend.reset(segment.loaded)
        self.cache.rewind(0)

    def rewind(self, position: int) -> None:
        """Forget every token from `position` on (the cache keeps its memory)."""
        self.cache.rewind(position)

    @property
    def can_snapshot(self) -> bool:
        """Whether `save_prefix`/`restore_prefix` work: only when every segment keeps its keys
        and values in this engine's arrays (a backend that `owns_cache`, a GPU's or a cluster
        peer's, holds them where a copy of these arrays would not reach)."""
        return not any(segment.backend.owns_cache for segment in self._distinct())

    def save_prefix(self, n: int) -> KVSnapshot:
        """A copy of the first `n` cached positions and their tokens, for `restore_prefix`."""
        self._check_snapshots()
        keys, values = self.cache.save(n)
        return KVSnapshot(self._history[:n].copy(), keys, values)

    def restore_prefix(self, snapshot: KVSnapshot) -> None:
        """Make the cache hold exactly `snapshot`'s tokens again (what follows is forgotten);
        the history goes back too, so a lost device's share could still be rebuilt."""
        self._check_snapshots()
        if snapshot.length > self.max_context:
            raise ValueError(
                f"a {snapshot.length}-token snapshot exceeds the {self.max_context}-token cache"
            )
        self.cache.restore(snapshot.keys, snapshot.values)
        self._history[: snapshot.length] = snapshot.tokens

    def _check_snapshots(self) -> None:
        if not self.can_snapshot:
            owners = sorted(
                {s.backend.describe() for s in self._distinct() if s.backend.owns_cache}
            )
            raise ConfigError(
                f"{', '.join(owners)} keeps its own KV cache: this engine cannot save or restore "
                "a prefix of it"
            )

    def close(self) -> None:
        """Unload every executable (the engine is unusable afterwards)."""
        for segment in self._distinct():
            unload_quietly(segment)
        for placed in self._placed.values():
            placed.clear()

    def _distinct(self) -> list[Segment]:
        """Every loaded segment once (one executable may serve several step kinds)."""
        seen: dict[int, Segment] = {}
        for placed in self._placed.values():
            for segments in placed:
                for chain in segments.values():
                    for segment in chain:
                        seen.setdefault(id(segment), segment)
        return list(seen.values())

    def loaded_segments(self) -> list[Loaded]:
        """What each backend loaded, in part order (a streamed segment's window, for one)."""
        return [segment.loaded for segment in self._distinct()]

    def cpu_threads(self) -> int | None:
        if any(segment.backend.device.upper() != "CPU" for segment in self.segments):
            return None
        return self.threads

    def rounds_by_step(self) -> bool:
        """MatMulNBits at accuracy_level 4 quantizes activations to int8 per block, on other
        paths for one token than for several. (w8a8 packages round per token and always step
        two tokens or more, which makes them exact: see `min_step_tokens`; so does
        `EngineConfig.uniform_steps` for these.)"""
        return self.min_step < 2 and self._rounds_by_level()

    def _rounds_by_level(self) -> bool:
        return self.graphs and any(
            level >= 1 for level in self.package.manifest.quant.accuracy_levels
        )

    def describe(self) -> str:
        manifest = self.package.manifest
        lines = [self.placement.describe(manifest)]
        if "prefill" in self.placements:
            lines.append("prompts:\n" + self.placements["prefill"][0].describe(manifest))
        lines += [str(f) for f in self.fallbacks]
        for segment in self._distinct():
            summary = segment.backend.summary(segment.loaded)
            if summary:
                lines.append(summary)
        return "\n".join(lines)

    def report(self) -> str | None:
        """What backends have to say after a generation (streaming I/O); None if nothing."""
        lines = [segment.backend.report(segment.loaded) for segment in self._distinct()]
        return "\n".join(line for line in lines if line) or None

    def prefill(self, token_ids: list[int] | np.ndarray, all_logits: bool = False) -> np.ndarray:
        """Feed tokens in chunks; logits [S, V] for every position, or [1, V] for the last."""
        ids = token_array(token_ids, self.spec.vocab_size)
        self._check_room(len(ids))

        def step(chunk: np.ndarray, want: bool) -> np.ndarray | None:
            # logits are a view of a reused buffer: copy what is kept
            return self._step(chunk, all_logits).copy() if want else self._step(chunk, None)

        return prefill_in_chunks(ids, self.chunk, all_logits, step)

    def verify(self, token_ids: list[int] | np.ndarray) -> np.ndarray:
        """Feed up to `chunk` tokens in one step through the decode graphs; logits [S, V].

        Speculative decoding's verification pass: a package's prefill graphs (int8 kernels)
        would judge a draft with other arithmetic than decoding uses.
        """
        ids = token_array(token_ids, self.spec.vocab_size)
        self._check_room(len(ids))
        if len(ids) > self.chunk:
            raise ValueError(f"verify takes at most {self.chunk} tokens, got {len(ids)}")
        self._ids[0, : len(ids)] = ids
        return self._run(len(ids), True, decode_graphs=True).copy()

    def verify_tree(self, token_ids: list[int] | np.ndarray, parents: Sequence[int]) -> np.ndarray:
        """`verify` over a token tree: node i (`token_ids[i]`, node 0 the root) sits one
        position after `parents[i]` and sees only its ancestors; logits [S, V], each row
        those of a chain pass over the node's path. Follow with `commit_tree`."""
        if self.tree is None:
            raise ConfigError("this engine was loaded without EngineConfig(tree_verify=True)")
        ids = token_array(token_ids, self.spec.vocab_size)
        self.tree.plan(check_parents(parents, len(ids)))
        try:
            return self.verify(ids)
        finally:
            self.tree.clear()

    def commit_tree(self, base: int, path: Sequence[int]) -> None:
        """Keep the nodes `path` (root first) of the tree fed at `base`: the cache then holds
        them at consecutive positions, and nothing of the other branches."""
        if self.tree is None:
            raise ConfigError("this engine was loaded without EngineConfig(tree_verify=True)")
        kept = self._history[base + np.asarray(path, np.int64)].copy() if len(path) else None
        compact(self.cache, base, path)
        self._history[base : base + len(path)] = kept

    def decode(self, token_id: int) -> np.ndarray:
        """Feed one token; its next-token logits [V] (a view, valid until the next call)."""
        self._check_room(1)
        self._ids[0, 0] = checked_token(token_id, self.spec.vocab_size)
        return self._run(1, False)[0]

    def _check_room(self, n: int) -> None:
        if n < 1:
            raise ValueError("no tokens to run")
        if self.position + n > self.max_context:
            raise ContextOverflowError(
                f"{self.position} tokens in context + {n} new exceed the context window of "
                f"{self.max_context} tokens; shorten the prompt or raise max_context "
                f"(the model supports up to {self.spec.max_position_embeddings})"
            )

    # ---- steps ------------------------------------------------------------------------------
    def _step(self, ids: np.ndarray, all_logits: bool | None) -> np.ndarray:
        self._ids[0, : len(ids)] = ids
        return self._run(len(ids), all_logits)

    def _run(self, n: int, all_logits: bool | None, decode_graphs: bool = False) -> np.ndarray:
        """Run n tokens already in `_ids`; logits [K, V] (K = n or 1; none when None)."""
        if self._broken:
            raise self._needs_reset()
        self.package.check_mapped()  # a mapped file that shrank would fault, not raise
        position = self.cache.position
        # A fixed-shape package runs the smallest graph that fits, padded at the end: padding
        # comes after every real token, so causal attention never lets a real token see it.
        size = max(min((s for s in self.steps if s >= n), default=n), self.min_step)
        if position + size > self.cache.max_context:
            raise ContextOverflowError(
                f"this fixed-shape package pads a {n}-token step to {size} tokens, which "
                f"does not fit the {self.max_context}-token cache at position {position}"
            )
        self._ids[0, n:size] = 0
        self._seqlens[0] = position + size - 1
        self._total[()] = position + size
        self._last[0] = n - 1
        k = n if all_logits else 1
        logits = self._logits_buffer(size if self._host else k)
        signature = (size, k)
        step = size if self.steps else None
        if n > 1 and not decode_graphs and (self.prefill_segments or step in self.prefill_variants):
            segments = self.prefill_segments or self.prefill_variants[step]
        else:
            segments = self.variants[step]
        tree = self.tree.inputs(position, size) if self.tree is not None else None
        if self._host is not None:
            self._host.before(position, size)
        for i, segment in enumerate(segments):
            try:
                if segment.signature != signature:
                    self._bind_step(i, segment, size, all_logits, logits, k)
                    segment.signature = signature
                if tree is not None and ATTENTION_BIAS in segment.inputs:
                    segment.backend.bind(segment.loaded, tree, {})  # its shape follows position
                segment.backend.run(segment.loaded, position, size)
            except PackageError:
                raise  # the package's bytes are bad (a streamed file truncated), not the backend
            except Exception as exc:  # the backend's own error: wrap it with where it happened
                if segment.backend.recovers:  # its stand-in (ONNX Runtime's CPU) does not
                    # A linked stage may report the failure of an earlier one (`failed_stage`).
                    stage = getattr(exc, "failed_stage", segment.loaded)
                    self._recover(next((s for s in segments if s.loaded is stage), segment), exc)
                    return self._run(n, all_logits, decode_graphs)
                raise self._failed(segment, position, exc) from exc
        if self._host is not None:
            self._host.after(position, size)
        self._history[position : position + n] = self._ids[0, :n]
        self.cache.position = position + n
        return logits[0, n - k : n] if self._host else logits[0]

    def _failed(self, segment: Segment, position: int, exc: Exception) -> BackendError:
        from devices.backend import describe_parts

        self._broken.add(segment.placed)
        segment.signature = None
        parts = self.package.manifest.parts[segment.start : segment.end]
        message = (
            f"{segment.backend.describe()} failed running "
            f"{describe_parts(segment.start, parts)} at position {position}: "
            f"{type(exc).__name__}: {exception_text(exc)}; the engine works again after "
            "reset(), which reloads it"
        )
        log.error("%s", message)
        return BackendError(
            message, segment.backend.name, segment.backend.device, segment.start, segment.end
        )

    def _needs_reset(self) -> BackendError:
        placed = [self._loader.segment_placement(where) for where in sorted(self._broken)]
        names = ", ".join(f"{p.backend} (parts [{p.start}, {p.end}))" for p in placed)
        return BackendError(
            f"{names} failed earlier; call reset() before running again",
            placed[0].backend,
            "",
            placed[0].start,
            placed[0].end,
        )

    def _logits_buffer(self, k: int) -> np.ndarray:
        """Where a step's `k` rows of logits go. The rows for several positions grow to the
        most a step has asked for, not the chunk (64 rows of a 151,936-token vocabulary are
        37 MiB: a streamed verification asks for at most 16); segments bound to a smaller
        buffer bind again."""
        if k == 1:
            return self._logits_last
        if self._logits_all is None or self._logits_all.shape[1] < k:
            self._logits_all = np.zeros((1, k, self.spec.vocab_size), np.float32)
            for segment in self._distinct():
                segment.signature = None
        return self._logits_all[:, :k]

    def _bind_step(
        self, i: int, segment: Segment, n: int, all_logits: bool | None, logits: np.ndarray, k: int
    ) -> None:
        """(Re)bind the per-step buffers of a step shape; decode steps reuse one binding."""
        inputs: dict[str, np.ndarray] = {}
        outputs: dict[str, np.ndarray] = {}
        if fmt.SEQLENS_K in segment.inputs:
            inputs[fmt.SEQLENS_K] = self._seqlens
            inputs[fmt.TOTAL_SEQUENCE_LENGTH] = self._total
        if fmt.INPUT_IDS in segment.inputs:
            inputs[fmt.INPUT_IDS] = self._ids[:, :n]
        else:
            inputs[_hidden_name(segment.inputs)] = self._hidden[i - 1][:, :n]
        if self._host is not None:
            step_inputs, step_outputs = self._host.bind(n, segment.inputs, segment.outputs)
            inputs.update(step_inputs)
            outputs.update(step_outputs)
        if fmt.LOGITS in segment.outputs:
            if fmt.LOGITS_INDEX in segment.inputs:
                inputs[fmt.LOGITS_INDEX] = self._positions[:k] if all_logits else self._last
            outputs[fmt.LOGITS] = logits
        else:
            outputs[_hidden_name(segment.outputs)] = self._hidden[i][:, :n]
        segment.backend.bind(segment.loaded, inputs, outputs)


def _hidden_name(names: Sequence[str] | frozenset[str]) -> str:
    return next(name for name in names if name.startswith("hidden."))
