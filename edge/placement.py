"""Which parts run on which backend: the data structure the planner produces and the engine runs.

A `Placement` is contiguous segments over the package's parts (manifest order: embed, blocks,
head), each a half-open range `[start, end)` with a backend name and its options. Activations
cross between backends only at segment boundaries. `Fallback` records a segment the engine
could not put where the placement asked, and why.

>>> p = Placement.split(32, [(0, "ort_cpu"), (11, "openvino"), (21, "ort_cpu")])
>>> [(s.start, s.end, s.backend) for s in p.segments]
[(0, 11, 'ort_cpu'), (11, 21, 'openvino'), (21, 32, 'ort_cpu')]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from edge.errors import ConfigError
from edge.format import PREFILL_INT8_SUFFIXES, Manifest, PartEntry

OptionValue = str | int | float | bool
DEFAULT_BACKEND = "ort_cpu"


@dataclass(frozen=True)
class SegmentPlacement:
    """Parts [start, end) on `backend` with `options` (plain key/value pairs, kept sorted)."""

    start: int
    end: int
    backend: str = DEFAULT_BACKEND
    options: tuple[tuple[str, OptionValue], ...] = ()

    def __post_init__(self) -> None:
        if not (
            isinstance(self.start, int) and isinstance(self.end, int) and 0 <= self.start < self.end
        ):
            raise ConfigError(
                f"segment [{self.start}, {self.end}) must be a non-empty "
                "half-open range of part indices"
            )
        if not isinstance(self.backend, str) or not self.backend:
            raise ConfigError(
                f"segment [{self.start}, {self.end}): backend={self.backend!r} "
                "must be a backend name"
            )
        pairs = self.options.items() if isinstance(self.options, Mapping) else tuple(self.options)
        for pair in pairs:
            key, value = pair
            if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
                raise ConfigError(
                    f"segment [{self.start}, {self.end}): option {key!r}={value!r}"
                    " must map a name to a string or number"
                )
        object.__setattr__(self, "options", tuple(sorted((k, v) for k, v in pairs)))

    @property
    def option_dict(self) -> dict[str, OptionValue]:
        return dict(self.options)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "backend": self.backend,
            "options": self.option_dict,
        }


@dataclass(frozen=True)
class Placement:
    """Contiguous segments covering parts [0, end)."""

    segments: tuple[SegmentPlacement, ...]

    def __post_init__(self) -> None:
        segments = tuple(self.segments)
        if not segments:
            raise ConfigError("a placement needs at least one segment")
        if segments[0].start != 0:
            raise ConfigError(
                f"the first segment starts at part {segments[0].start}; it must start at 0"
            )
        for before, after in pairwise(segments):
            if after.start != before.end:
                raise ConfigError(
                    f"segments [{before.start}, {before.end}) and "
                    f"[{after.start}, {after.end}) are not contiguous"
                )
        object.__setattr__(self, "segments", segments)

    @property
    def end(self) -> int:
        return self.segments[-1].end

    @classmethod
    def single(
        cls,
        num_parts: int,
        backend: str = DEFAULT_BACKEND,
        options: Mapping[str, OptionValue] | None = None,
    ) -> Placement:
        """Everything on one backend."""
        return cls((SegmentPlacement(0, num_parts, backend, tuple((options or {}).items())),))

    @classmethod
    def split(
        cls,
        num_parts: int,
        starts: Sequence[tuple[int, str] | tuple[int, str, Mapping[str, OptionValue]]],
    ) -> Placement:
        """Segments from (start, backend[, options]) triples; each ends where the next starts."""
        bounds = [s[0] for s in starts[1:]] + [num_parts]
        return cls(
            tuple(
                SegmentPlacement(
                    spec[0], end, spec[1], tuple(spec[2].items()) if len(spec) > 2 else ()
                )  # type: ignore[misc]
                for spec, end in zip(starts, bounds)
            )
        )

    def check(self, manifest: Manifest) -> None:
        """The placement must cover exactly the package's parts."""
        if self.end != len(manifest.parts):
            raise ConfigError(
                f"the placement covers parts [0, {self.end}) but the package has "
                f"{len(manifest.parts)} parts (embed, "
                f"{len(manifest.blocks)} blocks, head)"
            )

    def describe(self, manifest: Manifest) -> str:
        lines = []
        for s in self.segments:
            names = [p.name for p in manifest.parts[s.start : s.end]]
            span = names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"
            options = f" {s.option_dict}" if s.options else ""
            lines.append(f"[{s.start}, {s.end}) {span}: {s.backend}{options}")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"segments": [s.to_dict() for s in self.segments]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Placement:
        try:
            return cls(
                tuple(
                    SegmentPlacement(
                        int(s["start"]),
                        int(s["end"]),
                        str(s["backend"]),
                        tuple(dict(s.get("options", {})).items()),
                    )
                    for s in data["segments"]
                )
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"malformed placement {data!r:.200}: {exc}") from exc


@dataclass(frozen=True)
class Fallback:
    """A segment the engine ran on `used` instead of the `backend` the placement asked for."""

    start: int
    end: int
    backend: str
    reason: str
    used: str = DEFAULT_BACKEND
    when: str = field(default="load")  # "available", "supports", "compile" or "reload"

    def __str__(self) -> str:
        return (
            f"parts [{self.start}, {self.end}) on {self.used} instead of {self.backend} "
            f"({self.when}): {self.reason}"
        )


# Consecutive parts one ONNX Runtime session holds at most (bytes of weights) where memory is
# short: the pages of a session's weight maps are resident while it loads and dropped after,
# so the load peaks at the runtime's own copies plus one group's maps. Measured on
# Qwen2.5-Coder-1.5B int4 (2 threads, no spinning): 1, 4 and 15 sessions decode at 15.5, 16.3
# and 14.8 tok/s side by side; peak RSS 2750 MiB in one session, 1841 MiB in 64 MiB groups.
SESSION_BYTES = 256 << 20
# Groups are used when the package's weights exceed this share of the memory available.
SESSION_SPLIT_SHARE = 0.25


def session_cap(total: int, parts_per_session: int | None = None) -> int | None:
    """`SESSION_BYTES` when a package of `total` bytes is large for the memory available now
    (and the caller did not fix the parts per session); None: one session per segment."""
    if parts_per_session is not None or total <= SESSION_BYTES:
        return None
    from devices.memory_info import read_memory

    return SESSION_BYTES if total > read_memory().available * SESSION_SPLIT_SHARE else None


def session_groups(sizes: Sequence[int], cap: int = SESSION_BYTES) -> list[tuple[int, int]]:
    """[start, end) ranges of consecutive parts whose `sizes` add up to at most `cap` each (a
    part larger than `cap` alone), covering every part in order."""
    groups: list[tuple[int, int]] = []
    start, total = 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > cap:
            groups.append((start, i))
            start, total = i, 0
        total += size
    if sizes:
        groups.append((start, len(sizes)))
    return groups


def part_bytes(part: PartEntry) -> int:
    """Bytes of the weights a part's decode graph reads (its prefill graph's extra int8
    copies are not counted)."""
    return sum(t.nbytes for t in part.tensors if not t.name.endswith(PREFILL_INT8_SUFFIXES))
