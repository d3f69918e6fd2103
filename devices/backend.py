"""The `Backend` interface: how the engine runs consecutive parts of a model on one runtime.

Ahead of time, a backend answers `supports(part, package)` (with the reason when not) and
`compile`s a segment's graph into an `Executable` (where a runtime does its expensive work:
graph optimisation, weight pre-packing, an NPU's graph finalisation). At run time it says
whether this machine can run it at all (`is_available`, never pretending), `load`s an
executable with the arrays that live as long as the engine (KV cache, rope tables), `bind`s the
buffers of one step shape, `run`s steps and `unload`s.

Every array crosses this interface as a numpy array in host memory, bound by address, never
copied by the interface itself: a backend computing in host memory (ONNX Runtime or OpenVINO on
the CPU) reads its input activations from the engine's buffer and writes its outputs into the
next one, so consecutive CPU segments exchange activations with zero copies. A backend with
memory of its own copies at its boundaries. Runtime state (the KV cache) belongs to the engine
(edge/kv_cache.py); `devices/` only sees its arrays.

>>> from devices.registry import create  # doctest: +SKIP
>>> backend = create("openvino", {"threads": 2})
>>> backend.is_available()
Support(ok=True, reason='')
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import ClassVar, Protocol

import numpy as np

from edge import format as fmt
from edge.errors import ConfigError
from edge.format import Manifest, PartEntry, TensorEntry

OptionValue = str | int | float | bool
Options = Mapping[str, OptionValue]


@dataclass(frozen=True)
class Support:
    """Whether something can run here; a refusal always says why (the planner reports it)."""

    ok: bool
    reason: str = ""

    def __post_init__(self) -> None:
        if not self.ok and not self.reason:
            raise ValueError("a refusal must say why (Support(ok=False) needs a reason)")

    def __bool__(self) -> bool:
        return self.ok


YES = Support(True)


class PackageSource(Protocol):
    """What a backend reads of a package (edge.package.Package is one; devices/ cannot
    import it)."""

    root: Path
    manifest: Manifest

    def graph_bytes(
        self, part: PartEntry, step: int | None = None, prefill: bool = False
    ) -> bytes: ...

    def tensor(self, entry: TensorEntry) -> np.ndarray: ...


def graph_file(part: PartEntry, step: int | None = None, prefill: bool = False) -> str:
    """The graph a part runs for a step: the fixed-shape one for `step` tokens (NPU packages),
    its multi-token prefill graph when asked and present, else its plain graph."""
    if step is not None:
        return dict(part.static_graphs)[step]
    return part.prefill_graph if prefill and part.prefill_graph else part.graph


def part_graph_files(part: PartEntry) -> tuple[str, ...]:
    """Every graph a part ships (what an ahead-of-time check must accept)."""
    if part.static_graphs:
        return tuple(f for _, f in part.static_graphs)
    return (part.graph, part.prefill_graph) if part.prefill_graph else (part.graph,)


def describe_parts(start: int, parts: Sequence[PartEntry]) -> str:
    """`parts [1, 11) (block.0..block.9)`: the half-open range and the names, for messages."""
    names = parts[0].name if len(parts) == 1 else f"{parts[0].name}..{parts[-1].name}"
    return f"parts [{start}, {start + len(parts)}) ({names})"


@dataclass(frozen=True, eq=False)
class SegmentGraph:
    """What `compile` turns into an executable: consecutive parts as one graph.

    `model` is the parts' graphs merged into one ONNX model, weights still external (the
    engine merges them: edge/graph_merge.py). A runtime that resolves external weights from
    files itself (OpenVINO) reads the parts' own graph files instead (`files`).
    """

    package: PackageSource
    start: int  # index in manifest.parts of the first part
    parts: tuple[PartEntry, ...]
    model: bytes
    step: int | None = None  # fixed-shape graphs of this many tokens
    prefill: bool = False  # the parts' multi-token prefill graphs

    @property
    def end(self) -> int:
        return self.start + len(self.parts)

    @property
    def label(self) -> str:
        variant = (
            f"{self.step}-token graphs"
            if self.step is not None
            else "prefill graphs"
            if self.prefill
            else "graphs"
        )
        return f"{describe_parts(self.start, self.parts)}, {variant}"

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(self.package.root / graph_file(p, self.step, self.prefill) for p in self.parts)


@dataclass(frozen=True, eq=False)
class Resident:
    """Arrays bound once for the engine's lifetime; they must stay alive and in place.

    keys/values: per layer [1, H_kv, max_context, D] float32, written in place by the graphs'
    attention (or copied in by a backend that cannot). cos/sin: [max_context, D/2].
    """

    keys: Sequence[np.ndarray]
    values: Sequence[np.ndarray]
    cos: np.ndarray
    sin: np.ndarray

    def inputs_for(self, parts: Iterable[PartEntry]) -> dict[str, np.ndarray]:
        """Graph input name -> array: the rope tables and each block's past keys/values."""
        arrays = {fmt.COS_CACHE: self.cos, fmt.SIN_CACHE: self.sin}
        for i in _block_indices(parts):
            arrays[fmt.past_key_name(i)] = self.keys[i]
            arrays[fmt.past_value_name(i)] = self.values[i]
        return arrays

    def presents_for(self, parts: Iterable[PartEntry]) -> dict[str, np.ndarray]:
        """Graph output name -> the cache array its new keys/values belong in."""
        arrays = {}
        for i in _block_indices(parts):
            arrays[fmt.present_key_name(i)] = self.keys[i]
            arrays[fmt.present_value_name(i)] = self.values[i]
        return arrays


def _block_indices(parts: Iterable[PartEntry]) -> list[int]:
    return [p.block_index for p in parts if p.kind == "block" and p.block_index is not None]


@dataclass(eq=False)
class Executable:
    """A compiled segment. Subclasses hold the runtime's object (a session, a compiled model)."""

    backend: str
    graph: SegmentGraph
    inputs: frozenset[str]
    outputs: tuple[str, ...]


@dataclass(eq=False)
class Loaded:
    """An executable made runnable, with its resident arrays bound. Subclasses add state."""

    executable: Executable


class Backend(ABC):
    """One runtime on one device. Instances are cheap; create one per segment or share them.

    Subclasses declare `name` (the registry key), `OPTIONS` (allowed option names -> type) and
    implement the ahead-of-time and run-time halves.
    """

    name: ClassVar[str]
    OPTIONS: ClassVar[Mapping[str, type | tuple[type, ...]]] = {"threads": int}
    # False for backends that compute a part from the manifest's spec and weights rather than
    # from its ONNX graph (numpy, PyTorch, the streamed path): the engine then merges no graphs,
    # and one executable serves every step length (prompt graphs and fixed shapes are ONNX's).
    reads_graphs: ClassVar[bool] = True
    # Whether the engine may run a segment this backend cannot load on ONNX Runtime's CPU
    # backend instead; not where that would break what the user asked for (a memory budget).
    may_fall_back: ClassVar[bool] = True
    # A failure while running means the device left (a cluster peer): the engine re-places the
    # segment and rebuilds the KV cache from the tokens so far, and generation goes on.
    recovers: ClassVar[bool] = False
    # The backend keeps the keys/values of its blocks itself (on a GPU, on a cluster peer), not
    # in the engine's resident arrays: copies of those arrays would not save or restore its
    # cache, so the engine takes no KV snapshots (`Engine.can_snapshot`).
    owns_cache: ClassVar[bool] = False
    # Element types of the engine's KV arrays this backend computes with: ONNX Runtime's CPU
    # attention takes float32 only; a backend with its own attention may read float16.
    kv_dtypes: ClassVar[tuple[str, ...]] = ("float32",)

    def __init__(self, options: Options | None = None) -> None:
        self.options: Mapping[str, OptionValue] = MappingProxyType(
            self.check_options(dict(options or {}))
        )

    @classmethod
    def check_options(cls, options: dict[str, OptionValue]) -> dict[str, OptionValue]:
        """Validate option names and types; `ConfigError` names the bad one and the allowed."""
        for key, value in options.items():
            kind = cls.OPTIONS.get(key)
            if kind is None:
                raise ConfigError(
                    f"backend {cls.name!r} has no option {key!r}; allowed: {sorted(cls.OPTIONS)}"
                )
            # bool is an int in Python; an int option must not silently take True
            if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
                raise ConfigError(
                    f"backend {cls.name!r} option {key}={value!r} must be {_type_names(kind)}"
                )
        threads = options.get("threads")
        if threads is not None and int(threads) < 1:
            raise ConfigError(f"backend {cls.name!r} option threads={threads}; must be >= 1")
        return options

    @property
    def device(self) -> str:
        """The device this backend computes on, in words (for messages and fallbacks)."""
        return "CPU"

    def describe(self) -> str:
        return f"{self.name} on {self.device}"

    # ---- ahead of time ----------------------------------------------------------------------
    @abstractmethod
    def supports(self, part: PartEntry, package: PackageSource) -> Support:
        """Can this backend run `part` whole (every graph it ships)? The reason when not."""

    @abstractmethod
    def compile(self, graph: SegmentGraph) -> Executable:
        """Build the runtime's executable for a segment (may take tens of milliseconds)."""

    # ---- run time ---------------------------------------------------------------------------
    @abstractmethod
    def is_available(self) -> Support:
        """Can this machine run this backend now (runtime installed, device present)?"""

    @abstractmethod
    def load(self, executable: Executable, resident: Resident) -> Loaded:
        """Make `executable` runnable, binding the resident arrays its graph reads/writes."""

    @abstractmethod
    def bind(
        self, loaded: Loaded, inputs: Mapping[str, np.ndarray], outputs: Mapping[str, np.ndarray]
    ) -> None:
        """Bind one step shape's buffers (views of the engine's, which stay in place until
        the next bind). Called only when the step shape changes, not every step."""

    @abstractmethod
    def run(self, loaded: Loaded, position: int, size: int) -> None:
        """Run one step of `size` tokens whose keys/values go at [position, position+size)."""

    @abstractmethod
    def unload(self, loaded: Loaded) -> None:
        """Release what `load` took; `loaded` must not be run afterwards."""

    # ---- optional ---------------------------------------------------------------------------
    def reset(self, loaded: Loaded) -> None:
        """The engine emptied its KV cache: drop per-generation state (a prefetch window)."""
        return None

    def summary(self, loaded: Loaded) -> str | None:
        """How the segment runs, beyond its placement (a streaming window), for `describe`."""
        return None

    def report(self, loaded: Loaded) -> str | None:
        """What a user wants to know after a generation (streaming I/O); None if nothing."""
        return None

    def chain(self, loaded: Loaded, successor: Loaded | None) -> None:
        """`successor` runs right after `loaded` on every step (None: not one executable).
        Backends whose devices can hand their output to the next one directly take it
        (cluster workers: one network hop per pipeline boundary); a `recovers` backend whose
        run fails because an earlier linked segment's device did names that segment's
        `Loaded` as the exception's `failed_stage`. The default runs each segment alone."""
        return None

    def reachable(self) -> bool:
        """For a `recovers` backend: whether every device it runs on answers now, so that a
        segment moved away when one left can move back (a restarted worker)."""
        return False

    def survivors(self, lost: str) -> Options | None:
        """For a `recovers` backend whose peer `lost` left: its options over the devices
        still there (the engine reloads the segment with them), or None to move the segment
        to this machine's CPU."""
        return None


def spec_interface(parts: Sequence[PartEntry]) -> tuple[frozenset[str], tuple[str, ...]]:
    """A segment's inputs and outputs as its merged graph would have them, for backends that
    do not read graphs: what its parts read that no earlier part of it produces, and what they
    produce that no later part reads."""
    produced = {name for p in parts for name in p.outputs}
    consumed = {name for p in parts for name in p.inputs}
    return frozenset(consumed - produced), tuple(
        n for p in parts for n in p.outputs if n not in consumed
    )


def _type_names(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)
