"""What an engine does when a device leaves mid-generation and when it comes back.

A cluster peer that stops answering fails the step it was running: its parts are placed again
(on the survivors, or on this machine: `edge.lost_device`), the KV cache is rebuilt from the
tokens so far, and the step runs again. Between generations, `readmit` moves those parts back
once every device of their first placement answers again.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from edge.placement import Placement, SegmentPlacement
from edge.segments import Placed, Segment, exception_text
from edge.step_inputs import prefill_in_chunks

if TYPE_CHECKING:
    import numpy as np

    from edge.engine_config import EngineConfig
    from edge.kv_cache import KVCache
    from edge.segments import SegmentLoader

log = logging.getLogger("edge.engine")


class DeviceRecovery:
    """The lost-device half of `edge.engine.Engine` (which sets these attributes)."""

    config: EngineConfig
    cache: KVCache
    chunk: int
    fallbacks: list[Any]
    placements: dict[str, tuple[Placement, Any]]
    _placed: dict[str, list[dict[Any, list[Segment]]]]
    _loader: SegmentLoader
    _displaced: dict[Placed, SegmentPlacement]
    _next_readmit: float
    _history: np.ndarray
    _ids: np.ndarray

    def _assemble(self) -> None: ...
    def _settle_memory(self) -> None: ...
    def reset(self) -> None: ...
    def _step(self, ids: np.ndarray, all_logits: bool | None) -> np.ndarray: ...

    def _recover(self, segment: Segment, exc: Exception) -> None:
        """A device left mid-step (a cluster peer): load its parts elsewhere, rebuild the KV
        cache from the tokens so far, and let the step run again. Its steps so far wrote
        keys and values the new device does not hold, so every token is fed again; the
        step's own ids are kept aside meanwhile."""
        reason = (
            f"{segment.backend.describe()} was lost: {type(exc).__name__}: {exception_text(exc)}"
        )
        log.warning("%s; re-placing its parts and rebuilding the KV cache", reason)
        phase, index = segment.placed
        self._displaced.setdefault(segment.placed, self._loader.segment_placement(segment.placed))
        self._next_readmit = time.monotonic() + self.config.readmit_interval_s
        for chain in self._placed[phase][index].values():
            for lost in chain:
                unload_quietly(lost)
        options = segment.backend.survivors(getattr(exc, "peer", ""))
        if options is not None:  # the devices left take the lost one's share
            placement, kinds = self.placements[phase]
            segments = list(placement.segments)
            segments[index] = replace(segments[index], options=tuple(options.items()))
            self.placements[phase] = (Placement(tuple(segments)), kinds)
            reason = ""
        self._placed[phase][index] = self._loader.place(segment.placed, reloading=True, lost=reason)
        self._assemble()
        self._settle_memory()
        position, step = self.cache.position, self._ids.copy()
        self.cache.rewind(0)
        try:
            if position:
                history = self._history[:position].copy()
                prefill_in_chunks(history, self.chunk, False, lambda ids, _: self._step(ids, None))
        finally:
            self._ids[...] = step

    def readmit(self) -> list[str]:
        """Move segments re-placed when their device left back onto it once every device of
        their first placement answers again (a worker restarted), so the next generation runs
        as planned. Called between generations: the KV cache is emptied when anything moves.
        A device still gone is asked at most every `EngineConfig.readmit_interval_s`."""
        if not self._displaced or time.monotonic() < self._next_readmit:
            return []
        self._next_readmit = time.monotonic() + self.config.readmit_interval_s
        moved = []
        for where, first in sorted(self._displaced.items()):
            if not self._loader.backend(first.backend, first.option_dict).reachable():
                continue
            phase, index = where
            placement, kinds = self.placements[phase]
            segments = list(placement.segments)
            segments[index] = first
            self.placements[phase] = (Placement(tuple(segments)), kinds)
            for chain in self._placed[phase][index].values():
                for segment in chain:
                    unload_quietly(segment)
            fallbacks = len(self.fallbacks)
            self._placed[phase][index] = self._loader.place(where, reloading=True)
            if len(self.fallbacks) > fallbacks:
                continue  # it answered but could not load: still on this machine, asked again
            del self._displaced[where]
            self.fallbacks[:] = [
                f
                for f in self.fallbacks
                if (f.start, f.end, f.backend) != (first.start, first.end, first.backend)
            ]
            moved.append(f"parts [{first.start}, {first.end}) back on {first.backend}")
        if moved:
            self._assemble()
            self._settle_memory()
            self.reset()
            log.warning("readmitted: %s", "; ".join(moved))
        return moved


def unload_quietly(segment: Segment) -> None:
    try:
        segment.backend.unload(segment.loaded)
    except Exception as exc:  # a backend that already failed may fail to unload too
        log.warning("unloading %s failed: %s", segment.backend.describe(), exc)
