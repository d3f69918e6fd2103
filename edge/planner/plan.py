"""The planner's inputs (`Device`, `PlanConfig`) and its output (`Plan`), as frozen data.

A `Plan` says which device runs each part for decode and for the prompt (they may differ: an
NPU takes fixed-shape prompt chunks, a CPU or GPU the decode steps), resident or streamed,
what that is predicted to cost (time to first token, decode tokens/s, peak memory per device)
and why every part that could have run somewhere faster did not. `plan.placement()` is what
`EngineConfig(placement=...)` runs; `plan.engine_config()` builds the whole engine config.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from devices.profiles import DeviceProfile
from edge.errors import ConfigError
from edge.placement import OptionValue, Placement, SegmentPlacement
from edge.planner.memory import ImportFootprint

MODES = ("auto", "resident", "streamed")
DEFAULT_DISK_GBS = 1.6  # cold sequential reads on the reference VM (bench/bench_disk.py: 1.65)
STREAM_BACKEND = "streamed"  # the streamed backend (numpy + llvmlite kernels over a window)


@dataclass(frozen=True)
class Device:
    """One device the planner may use, through one backend, within a memory budget.

    `budget` (bytes) caps this device's share; None leaves the profile's `memory_bytes`.
    Devices naming the same `profile.memory_pool` share memory: together they stay within the
    largest budget among them (and the pool's size). The host CPU's share includes the
    process itself (interpreter, libraries, tokenizer). `options` go into the placement.
    """

    profile: DeviceProfile
    backend: str = "ort_cpu"
    budget: int | None = None
    options: tuple[tuple[str, OptionValue], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.profile, DeviceProfile):
            raise ConfigError(f"Device.profile must be a DeviceProfile, got {self.profile!r}")
        if not isinstance(self.backend, str) or not self.backend:
            raise ConfigError(f"Device.backend must be a backend name, got {self.backend!r}")
        if self.budget is not None:
            try:
                budget = operator.index(self.budget)
            except TypeError:
                raise ConfigError(
                    f"Device.budget must be bytes (int) or None, got {self.budget!r}"
                ) from None
            if isinstance(self.budget, bool) or budget <= 0:
                raise ConfigError(f"Device.budget must be > 0 bytes, got {self.budget!r}")
        options = dict(self.options)
        object.__setattr__(self, "options", tuple(sorted(options.items())))

    @property
    def label(self) -> str:
        return f"{self.profile.name}/{self.backend}"

    @property
    def limit(self) -> int:
        """Bytes this device's share may use."""
        memory = self.profile.memory_bytes
        return memory if self.budget is None else min(memory, int(self.budget))

    @classmethod
    def of(cls, value: Device | Sequence[Any]) -> Device:
        """A `Device`, or one from a (profile, backend, budget[, options]) tuple."""
        if isinstance(value, Device):
            return value
        if isinstance(value, (tuple, list)) and 1 <= len(value) <= 4:
            profile, *rest = value
            backend = rest[0] if rest else "ort_cpu"
            budget = rest[1] if len(rest) > 1 else None
            options = tuple(dict(rest[2]).items()) if len(rest) > 2 else ()
            return cls(profile, backend, budget, options)
        raise ConfigError(
            f"a device is a Device or (profile, backend, budget) tuple, got {value!r}"
        )


@dataclass(frozen=True)
class PlanConfig:
    """What to plan for.

    max_context: the KV cache length (None: min(4096, the model's)). prompt_tokens: the prompt
    whose time to first token is predicted. context_tokens: positions held when peak memory is
    predicted (None: a full cache); KV pages and OpenVINO's per-token growth depend on it.
    max_segments: contiguous segments per phase. min_split_gain: a split must beat the best
    single device by this fraction of decode time, or one device runs everything. disk_gbs:
    sequential read speed for streamed weights (None: DEFAULT_DISK_GBS, measured here with
    bench/bench_disk.py). mode: "auto"
    streams only when nothing resident fits; "resident"/"streamed" force one.
    """

    max_context: int | None = None
    prompt_tokens: int = 128
    prefill_chunk: int = 256
    context_tokens: int | None = None
    max_segments: int = 3
    min_split_gain: float = 0.10
    disk_gbs: float | None = None
    mode: str = "auto"
    npu_decode: bool = False
    int8_prefill: bool = True
    stream_prefill_chunk: int = 64
    stream_max_window: int | None = 4
    # Resident bytes of the runtime's libraries, measured by the caller (`plan_model` does:
    # edge.planner.machine.import_footprint); None plans with constants measured here once.
    footprint: ImportFootprint | None = None

    def __post_init__(self) -> None:
        for name in ("prompt_tokens", "prefill_chunk", "max_segments", "stream_prefill_chunk"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"PlanConfig.{name}={value!r}; must be an int >= 1")
        for name in ("max_context", "context_tokens", "stream_max_window"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ConfigError(f"PlanConfig.{name}={value!r}; must be an int >= 1 or None")
        if not 0 <= self.min_split_gain < 1:
            raise ConfigError(
                f"PlanConfig.min_split_gain={self.min_split_gain!r}; must be in [0, 1)"
            )
        if self.disk_gbs is not None and not self.disk_gbs > 0:
            raise ConfigError(f"PlanConfig.disk_gbs={self.disk_gbs!r}; must be > 0")
        if self.mode not in MODES:
            raise ConfigError(f"PlanConfig.mode={self.mode!r}; allowed: {MODES}")


@dataclass(frozen=True)
class SegmentPlan:
    """Parts [start, end) on one device; `seconds` per decode step, or for the whole prompt."""

    start: int
    end: int
    device: str
    backend: str
    parts: str
    seconds: float
    options: tuple[tuple[str, OptionValue], ...] = ()


@dataclass(frozen=True)
class DeviceUse:
    """One device's share of the plan and its predicted peak memory."""

    device: str
    kind: str
    memory_pool: str
    decode_parts: int
    prefill_parts: int
    peak_bytes: int
    limit_bytes: int
    breakdown: tuple[tuple[str, int], ...]


@dataclass(frozen=True)
class Transfer:
    """Activations crossing a segment boundary (after part `after`)."""

    phase: str
    after: str
    source: str
    target: str
    bytes_per_token: int
    seconds: float


@dataclass(frozen=True)
class PartFallback:
    """Parts [start, end) did not run on `device` for `phase`, because `reason`."""

    phase: str
    start: int
    end: int
    parts: str
    device: str
    reason: str

    def __str__(self) -> str:
        return f"{self.phase} {self.parts}: not on {self.device}: {self.reason}"


@dataclass(frozen=True)
class Streaming:
    """A streamed plan: pinned parts stay resident, the rest stream through a window of
    `window` buffers of `unit_bytes`, re-read from disk every token unless they all fit."""

    budget: int
    pinned: tuple[str, ...]
    streamed: tuple[str, ...]
    window: int
    unit_bytes: int
    pool_bytes: int
    read_bytes_per_token: int
    disk_gbs: float
    engine_minimum: int  # the smallest budget the streamed backend accepts for this model


@dataclass(frozen=True)
class StoredPacking:
    """The process's peak when ONNX Runtime's CPU backend keeps its packed weights in edge's
    cache (`EngineConfig.prepacked_cache`): the first load packs on the heap and writes the
    store (`first_load_peak_bytes`, an upper bound), every later load maps it
    (`mapped_peak_bytes`). `stored`: whether a store of this package for this machine's CPU
    and ONNX Runtime is in the cache now (None: not looked, a plan for other devices). The
    plan's `peak_bytes` stays the heap path's, which bounds the mapped loads: a load under a
    budget never builds a store and maps one only if it is there."""

    mapped_peak_bytes: int
    first_load_peak_bytes: int
    stored: bool | None = None


@dataclass(frozen=True)
class Plan:
    """The planner's answer; see the module docstring."""

    model: str
    mode: str  # "resident" or "streamed"
    max_context: int
    prompt_tokens: int
    context_tokens: int
    prefill_chunk: int
    decode: tuple[SegmentPlan, ...]
    prefill: tuple[SegmentPlan, ...]
    devices: tuple[DeviceUse, ...]
    transfers: tuple[Transfer, ...]
    fallbacks: tuple[PartFallback, ...]
    ttft_s: float
    decode_tokens_per_s: float
    peak_bytes: int  # the host process (every device sharing the host's memory)
    streaming: Streaming | None = None
    notes: tuple[str, ...] = field(default=())
    stored_packing: StoredPacking | None = None

    def placement(self) -> Placement:
        """The decode placement, for `EngineConfig(placement=...)`."""
        return _placement(self.decode)

    def prefill_placement(self) -> Placement:
        return _placement(self.prefill)

    def engine_config(self, threads: int | None = None) -> Any:
        """The `EngineConfig` that runs this plan: prompts on the prefill placement, tokens on
        the decode one (a streamed plan: both on the streamed backend under its budget)."""
        from edge.engine import EngineConfig
        from edge.kv_cache import STREAMED_KV_DTYPE

        return EngineConfig(
            max_context=self.max_context,
            prefill_chunk=self.prefill_chunk,
            threads=threads,
            placement=self.placement(),
            prefill_placement=self.prefill_placement(),
            kv_dtype=STREAMED_KV_DTYPE if self.mode == "streamed" else "float32",
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["placement"] = self.placement().to_dict()
        data["prefill_placement"] = self.prefill_placement().to_dict()
        return data


def _placement(segments: Sequence[SegmentPlan]) -> Placement:
    if not segments:
        raise ConfigError("the plan has no segments")
    return Placement(
        tuple(SegmentPlacement(s.start, s.end, s.backend, s.options) for s in segments)
    )
