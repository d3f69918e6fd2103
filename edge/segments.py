"""Loading placement segments onto their backends: the engine's building half.

Each segment of a placement (consecutive parts on one backend) becomes one executable, or, for
backends that read ONNX graphs, one per step kind and session group; a backend that cannot
load it falls back to ONNX Runtime's CPU backend (said, and recorded in `fallbacks`), and the
parts of a device that left run on this machine (`edge.lost_device`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING

from tqdm import tqdm

from edge.errors import ConfigError, PackageError
from edge.format import PartEntry
from edge.graph_merge import merge_models
from edge.package import Package
from edge.placement import (
    DEFAULT_BACKEND,
    Fallback,
    Placement,
    SegmentPlacement,
    part_bytes,
    session_groups,
)
from edge.prepacked import effective

if TYPE_CHECKING:
    from devices.backend import Backend, Loaded, Resident
    from edge.engine import EngineConfig

log = logging.getLogger("edge.engine")

Kind = tuple[int | None, bool]  # (fixed step length or None, prefill graphs)
Placed = tuple[str, int]  # ("decode" or "prefill" placement, segment index in it)


class Segment:
    """One loaded executable: consecutive parts on one backend, with its step-binding cache."""

    __slots__ = ("backend", "end", "inputs", "loaded", "outputs", "placed", "signature", "start")

    def __init__(self, backend: Backend, loaded: Loaded, placed: Placed) -> None:
        executable = loaded.executable
        self.backend, self.loaded, self.placed = backend, loaded, placed
        self.inputs, self.outputs = executable.inputs, executable.outputs
        self.start, self.end = executable.graph.start, executable.graph.end
        self.signature: tuple[int, int] | None = None

    @property
    def session(self):  # the ONNX Runtime session, for ORT backends (edge bench prints it)
        return getattr(self.loaded.executable, "session", None)


class SegmentLoader:
    """Loads the segments of `placements` (phase -> (placement, step kinds); the engine's own
    dict, which it re-places in when a device leaves or comes back) for one engine."""

    def __init__(
        self,
        package: Package,
        config: EngineConfig,
        placements: Mapping[str, tuple[Placement, list[Kind]]],
        resident: Resident,
        *,
        threads: int,
        chunk: int,
        progress: bool,
        session_cap: int | None,
    ) -> None:
        self.package, self.config, self.placements = package, config, placements
        self.resident, self.threads, self.chunk = resident, threads, chunk
        self.progress, self.session_cap = progress, session_cap
        self.fallbacks: list[Fallback] = []
        self.bar: tqdm | None = None  # while the engine's first load draws one

    def loading_bar(self) -> tqdm:
        """A bar over the weights ONNX Runtime-like backends build sessions from (seconds for a
        large model, with nothing else to show); the streamed path shows its own."""
        from edge.backends import backend_class

        total = sum(
            len(kinds) * sum(part_bytes(p) for p in self.package.manifest.parts[s.start : s.end])
            for placement, kinds in self.placements.values()
            for s in placement.segments
            if backend_class(s.backend).reads_graphs
        )
        return tqdm(
            total=total,
            unit="B",
            unit_scale=True,
            desc=f"load {self.package.root.name}",
            disable=not self.progress or not total,
            leave=False,
        )

    def backend(self, name: str, options: dict) -> Backend:
        from edge.backends import backend_class

        cls = backend_class(name)
        defaults: dict[str, object] = {
            "threads": self.threads,
            "chunk": self.chunk,
            "progress": self.progress,
        }
        defaults["prepacked"] = effective(self.config.prepacked_cache)
        if self.config.spinning is not None:
            defaults["spinning"] = self.config.spinning
        elif (
            self.session_cap or len({s.backend for s in self.placements["decode"][0].segments}) > 1
        ):
            # Between its runs another runtime (or session) computes on the same cores: an
            # idle ORT pool spinning there slows it (measured, SmolLM2 int4 split over ORT and
            # OpenVINO: 23 ms per token spinning, 14 ms not; Qwen2.5-Coder-1.5B in 16 sessions:
            # 1.5 tok/s spinning, 9.6 not).
            defaults["spinning"] = False
        options = {**{k: v for k, v in defaults.items() if k in cls.OPTIONS}, **options}
        return cls(options)

    def place(
        self, where: Placed, reloading: bool = False, lost: str = ""
    ) -> dict[Kind, list[Segment]]:
        """Load segment `where` (phase, index) on its backend, or on the CPU if that fails
        (at once when its device was `lost`: a peer that left is not waited for again)."""
        placed = self.segment_placement(where)
        backend = self.backend(placed.backend, placed.option_dict)
        if backend.name == DEFAULT_BACKEND:
            return self.load(backend, placed, where)
        when, reason = ("run", lost) if lost else self.refusal(backend, placed)
        if reason and not backend.may_fall_back:
            raise ConfigError(
                f"{backend.describe()} cannot run parts [{placed.start}, {placed.end}): {reason}"
            )
        if not reason:
            try:
                return self.load(backend, placed, where)
            except (PackageError, ConfigError):
                raise  # the package or the settings are wrong, not the backend
            except Exception as exc:  # any failure of the runtime: fall back, say why
                if not backend.may_fall_back:
                    raise
                when, reason = "compile", f"{type(exc).__name__}: {exception_text(exc)}"
        used, options = self.lost_fallback(where) if lost else (DEFAULT_BACKEND, {})
        fallback = Fallback(
            placed.start,
            placed.end,
            placed.backend,
            reason,
            used=used,
            when=f"reload, {when}" if reloading else when,
        )
        log.warning("%s", fallback)
        self.fallbacks.append(fallback)
        return self.load(self.backend(used, options), placed, where)

    def lost_fallback(self, where: Placed) -> tuple[str, dict]:
        """Where the parts of a device that left run here (`edge.lost_device`): the weights of
        the parts still on other devices are what a streamed budget must not count."""
        from edge.backends import backend_class
        from edge.lost_device import local_fallback

        placed = self.segment_placement(where)
        remote = sum(
            part_bytes(p)
            for s in self.placements[where[0]][0].segments
            if s != placed and backend_class(s.backend).recovers
            for p in self.package.manifest.parts[s.start : s.end]
        )
        return local_fallback(self.package.manifest.parts[placed.start : placed.end], remote)

    def segment_placement(self, where: Placed) -> SegmentPlacement:
        phase, index = where
        return self.placements[phase][0].segments[index]

    def refusal(self, backend: Backend, placed: SegmentPlacement) -> tuple[str, str]:
        available = backend.is_available()
        if not available:
            return "available", available.reason
        for part in self.package.manifest.parts[placed.start : placed.end]:
            supported = backend.supports(part, self.package)
            if not supported:
                return "supports", supported.reason
        return "", ""

    def load(
        self, backend: Backend, placed: SegmentPlacement, where: Placed
    ) -> dict[Kind, list[Segment]]:
        from devices.backend import SegmentGraph

        parts = self.package.manifest.parts[placed.start : placed.end]
        kinds = self.placements[where[0]][1]
        if not backend.reads_graphs:
            # One executable over the whole segment serves every step length.
            graph = SegmentGraph(self.package, placed.start, tuple(parts), b"")
            segment = Segment(backend, backend.load(backend.compile(graph), self.resident), where)
            return {kind: [segment] for kind in kinds}
        size = self.config.parts_per_session
        groups = (
            [(i, min(i + size, len(parts))) for i in range(0, len(parts), size)]
            if size
            else session_groups([part_bytes(p) for p in parts], self.session_cap or sys.maxsize)
        )
        out: dict[Kind, list[Segment]] = {}
        done: list[Segment] = []
        try:
            for step, prefill in kinds:
                out[step, prefill] = []
                for offset, end in groups:
                    group = tuple(parts[offset:end])
                    model = merge_models(
                        [self._graph(p, step, prefill, where[0]) for p in group],
                        name=group[0].name,
                    )
                    graph = SegmentGraph(
                        self.package, placed.start + offset, group, model, step, prefill
                    )
                    segment = Segment(
                        backend, backend.load(backend.compile(graph), self.resident), where
                    )
                    out[step, prefill].append(segment)
                    done.append(segment)
                    if self.bar is not None:
                        self.bar.update(sum(part_bytes(p) for p in group))
        except BaseException:
            for segment in done:
                backend.unload(segment.loaded)
            raise
        return out

    def _graph(self, part: PartEntry, step: int | None, prefill: bool, phase: str) -> bytes:
        """The part's graph; a decode block's with the token-tree inputs when asked for."""
        graph = self.package.graph_bytes(part, step, prefill)
        if self.config.tree_verify and phase == "decode" and not prefill and part.kind == "block":
            from edge.tree_attention import add_tree_inputs

            return add_tree_inputs(graph, f"part {part.name}")
        return graph


def exception_text(exc: BaseException) -> str:
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text[:400] + ("..." if len(text) > 400 else "")
