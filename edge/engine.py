"""The engine: ONNX Runtime sessions over a package's parts, a KV cache, prefill and decode.

Consecutive parts placed on one device form a *segment* and run as one session (their graphs
merged, see `graph_merge`): a `session.run` costs microseconds, but dozens per token add up.
Every buffer a step touches (token ids, KV cache, activations between segments, logits) is
allocated once and bound by address through IOBinding, so a decode step allocates nothing and
copies nothing in Python.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from edge import format as fmt
from edge.errors import ConfigError, ContextOverflowError
from edge.format import PartEntry
from edge.graph_merge import initializer_names, merge_models
from edge.kv_cache import KVCache
from edge.package import Package
from edge.rope import rope_tables

DEFAULT_MAX_CONTEXT = 4096


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


@dataclass(frozen=True)
class EngineConfig:
    """Run-time knobs. `parts_per_session=None` runs each device segment as one session."""

    max_context: int | None = None
    prefill_chunk: int = 256
    threads: int | None = None
    parts_per_session: int | None = None
    # Run multi-token steps with a package's prefill graphs (int8 kernels) when it has them;
    # off saves their memory on small devices, at the cost of slower prompts.
    prefill_kernels: bool = True

    def __post_init__(self) -> None:
        if self.max_context is not None and self.max_context < 1:
            raise ConfigError(f"max_context={self.max_context}; must be >= 1")
        if self.prefill_chunk < 1:
            raise ConfigError(f"prefill_chunk={self.prefill_chunk}; must be >= 1")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads={self.threads}; must be >= 1")
        if self.parts_per_session is not None and self.parts_per_session < 1:
            raise ConfigError(f"parts_per_session={self.parts_per_session}; must be >= 1")


def _ptr(array: np.ndarray) -> int:
    return array.ctypes.data


class _Segment:
    """One ONNX Runtime session over consecutive parts, with its static inputs bound once."""

    def __init__(self, package: Package, parts: list[PartEntry], threads: int,
                 cache: KVCache, rope: tuple[np.ndarray, np.ndarray],
                 step: int | None = None, prefill: bool = False) -> None:
        self.parts = parts
        model = merge_models([package.graph_bytes(p, step, prefill) for p in parts],
                             name=parts[0].name)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if step is not None:
            # A fixed-shape QDQ package is an NPU's graph; on the CPU keep its Q/DQ semantics.
            # ORT's int8 fusions change them per step length (measured: logits differ by up
            # to 1.0 between the 1-token and 64-token graphs; 0.2 with them off).
            options.add_session_config_entry("session.disable_quant_qdq", "1")
        used = initializer_names(model)  # a part's prefill weights are not its decode graph's
        tensors = {t.name: t for p in parts for t in p.tensors if t.name in used}
        # The weights come from our own memory maps (the same path streaming will use).
        self._weights = [package.tensor(t) for t in tensors.values()]
        options.add_external_initializers(
            list(tensors), [ort.OrtValue.ortvalue_from_numpy(w) for w in self._weights])
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.io = self.session.io_binding()
        self.signature: tuple[int, int] | None = None
        self._bind_static(cache, rope)

    def _bind_static(self, cache: KVCache, rope: tuple[np.ndarray, np.ndarray]) -> None:
        for name, table in zip((fmt.COS_CACHE, fmt.SIN_CACHE), rope):
            if name in self.inputs:
                self.bind(name, table)
        for part in self.parts:
            if part.kind != "block":
                continue
            i = part.block_index
            assert i is not None
            for buf, past, present in (
                (cache.keys[i], fmt.past_key_name(i), fmt.present_key_name(i)),
                (cache.values[i], fmt.past_value_name(i), fmt.present_value_name(i)),
            ):
                self.bind(past, buf)
                self.bind(present, buf, output=True)

    def bind(self, name: str, array: np.ndarray, output: bool = False) -> None:
        """Bind `array`'s memory (it must stay alive and in place) to an input or output."""
        binder = self.io.bind_output if output else self.io.bind_input
        binder(name, "cpu", 0, array.dtype.type, list(array.shape), _ptr(array))

    def run(self) -> None:
        self.session.run_with_iobinding(self.io)


class Engine:
    """Runs a package token by token. Not thread-safe: one generation at a time.

    >>> engine = Engine(open_package("smollm2-pkg"))  # doctest: +SKIP
    >>> logits = engine.prefill([1, 2, 3])  # [1, vocab] for the last position
    >>> logits = engine.decode(42)  # [vocab]
    """

    def __init__(self, package: Package, config: EngineConfig | None = None) -> None:
        self.package = package
        self.config = config = config or EngineConfig()
        spec = self.spec = package.spec
        # Fixed-shape (NPU) packages: one set of sessions per step length, a fixed cache.
        self.steps = package.static_steps
        static = (package.manifest.quantization or {}).get("static", {})
        self.max_context = static.get("max_context") or min(
            config.max_context or DEFAULT_MAX_CONTEXT, spec.max_position_embeddings)
        self.cache = KVCache.allocate(spec, self.max_context)
        # Bound by address below: these arrays must live as long as the engine.
        self.rope = rope_tables(spec, self.max_context)
        self.threads = config.threads or physical_cores()
        groups = self._groups(list(package.manifest.parts))
        self.variants = {step: [_Segment(package, group, self.threads, self.cache, self.rope,
                                         step) for group in groups]
                         for step in (self.steps or (None,))}
        self.segments = next(iter(self.variants.values()))
        has_prefill = any(p.prefill_graph for p in package.manifest.parts)
        self.prefill_segments = ([_Segment(package, group, self.threads, self.cache, self.rope,
                                           prefill=True) for group in groups]
                                 if has_prefill and config.prefill_kernels and not self.steps
                                 else None)
        chunk = self.chunk = (max(self.steps) if self.steps
                              else min(config.prefill_chunk, self.max_context))
        # Step buffers, bound by address; a step of S tokens uses their leading views.
        self._ids = np.zeros((1, chunk), np.int64)
        self._seqlens = np.zeros((1,), np.int32)
        self._total = np.zeros((), np.int32)
        self._positions = np.arange(chunk, dtype=np.int64)
        self._last = np.zeros((1,), np.int64)
        self._hidden = [np.zeros((1, chunk, spec.hidden_size), np.float32)
                        for _ in self.segments[1:]]
        self._logits_last = np.zeros((1, 1, spec.vocab_size), np.float32)
        self._logits_all: np.ndarray | None = None

    def _groups(self, parts: list[PartEntry]) -> list[list[PartEntry]]:
        size = self.config.parts_per_session or len(parts)
        return [parts[i:i + size] for i in range(0, len(parts), size)]

    @property
    def position(self) -> int:
        """How many tokens the KV cache holds."""
        return self.cache.position

    def reset(self) -> None:
        self.cache.rewind(0)

    def rewind(self, position: int) -> None:
        """Forget every token from `position` on (the cache keeps its memory)."""
        self.cache.rewind(position)

    def prefill(self, token_ids: list[int] | np.ndarray, all_logits: bool = False) -> np.ndarray:
        """Feed tokens in chunks; logits [S, V] for every position, or [1, V] for the last."""
        ids = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        self._check_room(len(ids))
        out = []
        for start in range(0, len(ids), self.chunk):
            chunk = ids[start:start + self.chunk]
            last_chunk = start + self.chunk >= len(ids)
            if all_logits or last_chunk:
                out.append(self._step(chunk, all_logits).copy())
            else:
                self._step(chunk, None)
        return np.concatenate(out) if all_logits else out[-1]

    def decode(self, token_id: int) -> np.ndarray:
        """Feed one token; its next-token logits [V] (a view, valid until the next call)."""
        self._check_room(1)
        self._ids[0, 0] = token_id
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

    def _step(self, ids: np.ndarray, all_logits: bool | None) -> np.ndarray:
        self._ids[0, :len(ids)] = ids
        return self._run(len(ids), all_logits)

    def _run(self, n: int, all_logits: bool | None) -> np.ndarray:
        """Run n tokens already in `_ids`; logits [K, V] (K = n or 1; none when None)."""
        position = self.cache.position
        # A fixed-shape package runs the smallest graph that fits, padded at the end: padding
        # comes after every real token, so causal attention never lets a real token see it.
        size = min((s for s in self.steps if s >= n), default=n)
        if position + size > self.max_context:
            raise ContextOverflowError(
                f"this fixed-shape package pads a {n}-token step to {size} tokens, which "
                f"does not fit the {self.max_context}-token cache at position {position}")
        self._ids[0, n:size] = 0
        self._seqlens[0] = position + size - 1
        self._total[()] = position + size
        self._last[0] = n - 1
        k = n if all_logits else 1
        logits = self._logits_buffer(k)
        signature = (size, k)
        segments = (self.prefill_segments if n > 1 and self.prefill_segments
                    else self.variants[size if self.steps else None])
        for i, segment in enumerate(segments):
            if segment.signature != signature:
                self._bind_step(i, segment, size, all_logits, logits, k)
                segment.signature = signature
            segment.run()
        self.cache.position = position + n
        return logits[0]

    def _logits_buffer(self, k: int) -> np.ndarray:
        if k == 1:
            return self._logits_last
        if self._logits_all is None:
            self._logits_all = np.zeros((1, self.chunk, self.spec.vocab_size), np.float32)
        return self._logits_all[:, :k]

    def _bind_step(self, i: int, segment: _Segment, n: int, all_logits: bool | None,
                   logits: np.ndarray, k: int) -> None:
        """(Re)bind the per-step buffers of a step shape; decode steps reuse one binding."""
        if fmt.SEQLENS_K in segment.inputs:
            segment.bind(fmt.SEQLENS_K, self._seqlens)
            segment.bind(fmt.TOTAL_SEQUENCE_LENGTH, self._total)
        if fmt.INPUT_IDS in segment.inputs:
            segment.bind(fmt.INPUT_IDS, self._ids[:, :n])
        else:
            segment.bind(next(name for name in segment.inputs if name.startswith("hidden.")),
                         self._hidden[i - 1][:, :n])
        if fmt.LOGITS in segment.outputs:
            index = self._positions[:k] if all_logits else self._last
            segment.bind(fmt.LOGITS_INDEX, index)
            segment.bind(fmt.LOGITS, logits, output=True)
        else:
            hidden_out = next(name for name in segment.outputs if name.startswith("hidden."))
            segment.bind(hidden_out, self._hidden[i][:, :n], output=True)
