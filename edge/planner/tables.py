"""Everything the search needs per (device, part), computed once: seconds, refusals, bytes.

The search then prices a candidate split with prefix sums instead of walking tensors, so
enumerating every split of a few hundred candidates per device sequence stays in milliseconds.
Memory here is per part (a tensor two parts map once by name is counted once when both are on
the same device), as the exact breakdown of the chosen plan (`memory.resident_breakdown`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import accumulate

from edge.format import Manifest
from edge.planner import memory, timing
from edge.planner.costs import ModelCosts, PartCost
from edge.planner.memory import ImportFootprint
from edge.planner.plan import Device, PlanConfig


@dataclass(frozen=True)
class Context:
    """The sizes a plan is made for, resolved from the config and the model."""

    max_context: int
    prompt_tokens: int
    tokens: int  # positions held when peak memory is predicted
    decoded: int  # of which decode steps
    chunk: int


def resolve(manifest: Manifest, costs: ModelCosts, config: PlanConfig) -> Context:
    from edge.engine import DEFAULT_MAX_CONTEXT

    spec = manifest.spec
    max_context = costs.static_context or min(
        config.max_context or DEFAULT_MAX_CONTEXT, spec.max_position_embeddings
    )
    prompt = min(config.prompt_tokens, max_context)
    tokens = min(config.context_tokens or max_context, max_context)
    chunk = min(config.prefill_chunk, max_context)
    return Context(max_context, prompt, tokens, max(tokens - prompt, 0), chunk)


def _refused(refusals: Mapping[tuple[str, int], str], device: Device, part: PartCost) -> str | None:
    """The backend's refusal of `part` for this device (keyed by its label) or for every
    device it drives (keyed by the backend's name)."""
    reason = refusals.get((device.label, part.index)) or refusals.get((device.backend, part.index))
    return None if reason is None else f"{device.backend}: {reason}"


def refusal(
    device: Device, part: PartCost, phase: str, manifest: Manifest, config: PlanConfig
) -> str | None:
    """Why `device` cannot run `part` for `phase` ("decode"/"prefill"), or None."""
    profile = device.profile
    kind = profile.kind
    if (profile.needs_static_shapes or profile.needs_int8) and not part.static_int8:
        return f"{kind}: part has no static int8 graph (export with --quant q-static-int8)"
    if kind == "npu" and phase == "decode":
        if not config.npu_decode:
            return (
                "npu: decode stays on CPU/GPU (an NPU's fixed-shape graphs waste it on "
                "1-token steps; PlanConfig(npu_decode=True) allows it)"
            )
        if 1 not in part.static_steps:
            return "npu: part has no 1-token static graph for decode"
    static = manifest.quant.static
    if (
        device.backend == "openvino"
        and kind == "cpu"
        and part.static_int8
        and static is not None
        and static.activation_bits == 16
    ):
        return (
            "openvino: its CPU plugin drops 16-bit QuantizeLinear/DequantizeLinear pairs "
            "(measured on 2026.4), so it would not compute this graph as written"
        )
    return None


@dataclass
class Tables:
    devices: tuple[Device, ...]
    costs: ModelCosts
    ctx: Context
    decode_s: list[list[float]]
    prefill_s: list[list[float]]
    decode_refusal: list[list[str | None]]
    prefill_refusal: list[list[str | None]]
    memory: list[list[int]]  # steady bytes per part (weights, mapped, per block, KV)
    relief: list[list[int]]  # bytes a part holds less while loading than when running
    shared: list[list[tuple[int, int, int]]]  # per device: (part, earlier part, bytes mapped once)
    host: int  # index of the device the process itself is charged to
    footprint: ImportFootprint | None = None  # the libraries' resident bytes (PlanConfig's)
    _prefix: dict = field(default_factory=dict)
    _transient: dict = field(default_factory=dict)

    @property
    def n(self) -> int:
        return self.costs.num_parts

    def prefix(self, table: str, d: int) -> list[float]:
        key = (table, d)
        if key not in self._prefix:
            self._prefix[key] = [0, *accumulate(getattr(self, table)[d])]
        return self._prefix[key]

    def span_sum(self, table: str, d: int, start: int, end: int) -> float:
        prefix = self.prefix(table, d)
        return prefix[end] - prefix[start]

    def transient(self, start: int, end: int, d: int) -> int:
        backend = self.devices[d].backend
        key = (start, end, backend)
        if key not in self._transient:
            model = memory.runtime_memory(backend)
            self._transient[key] = int(
                model.prepack_transient
                * memory._last_prepacked(self.costs, memory.Span(start, end, backend))
            )
        return self._transient[key]

    def growth(self, start: int, end: int, d: int) -> int:
        model = memory.runtime_memory(self.devices[d].backend)
        blocks = sum(p.kind == "block" for p in self.costs.parts[start:end])
        return self.ctx.decoded * (model.growth_per_token + model.growth_per_token_block * blocks)


def _part_memory(costs: ModelCosts, part: PartCost, backend: str, tokens: int) -> int:
    model = memory.runtime_memory(backend)
    total = sum(
        int((model.allocated.get(c, 1.0) + model.mapped.get(c, 0.0)) * b)
        for c, b in part.class_bytes.items()
    )
    if part.kind == "block":
        total += model.per_block_bytes + memory.kv_resident(costs.spec, 1, tokens)
    return total


def _part_relief(part: PartCost, backend: str) -> int:
    model = memory.runtime_memory(backend)
    if model.allocated_at_load is None:
        return 0
    return sum(
        int((model.allocated.get(c, 1.0) - model.allocated_at_load.get(c, 1.0)) * b)
        for c, b in part.class_bytes.items()
    )


def _shared_maps(costs: ModelCosts, backend: str) -> list[tuple[int, int, int]]:
    """Tensors a runtime maps once by name although two parts read them (a tied embedding):
    (later part, earlier part, mapped bytes counted twice by the per-part table)."""
    model = memory.runtime_memory(backend)
    if model.map_scope != "name":
        return []
    first: dict[str, int] = {}
    out = []
    for part in costs.parts:
        for name, _, _, cls, nbytes in part.tensors:
            if name in first and first[name] != part.index:
                out.append((part.index, first[name], int(model.mapped.get(cls, 0.0) * nbytes)))
            first.setdefault(name, part.index)
    return out


def build(
    manifest: Manifest,
    costs: ModelCosts,
    devices: tuple[Device, ...],
    config: PlanConfig,
    refusals: Mapping[tuple[str, int], str] | None = None,
) -> Tables:
    ctx = resolve(manifest, costs, config)
    refused = refusals or {}
    decode_s, prefill_s, decode_no, prefill_no, mem, relief, shared = [], [], [], [], [], [], []
    for device in devices:
        profile, backend = device.profile, device.backend
        # An NPU runs prompts in its largest fixed chunk; others in the configured one.
        chunk = ctx.chunk
        decode_s.append(
            [timing.decode_seconds(p, profile, backend, ctx.tokens // 2) for p in costs.parts]
        )
        prefill_s.append(
            [
                timing.prefill_seconds(
                    p,
                    profile,
                    backend,
                    ctx.prompt_tokens,
                    max(p.static_steps) if p.static_steps else chunk,
                    config.int8_prefill,
                )
                for p in costs.parts
            ]
        )
        decode_no.append(
            [
                _refused(refused, device, p) or refusal(device, p, "decode", manifest, config)
                for p in costs.parts
            ]
        )
        prefill_no.append(
            [
                _refused(refused, device, p) or refusal(device, p, "prefill", manifest, config)
                for p in costs.parts
            ]
        )
        mem.append([_part_memory(costs, p, backend, ctx.tokens) for p in costs.parts])
        relief.append([_part_relief(p, backend) for p in costs.parts])
        shared.append(_shared_maps(costs, backend))
    host = next((i for i, d in enumerate(devices) if d.profile.kind == "cpu"), 0)
    return Tables(
        devices,
        costs,
        ctx,
        decode_s,
        prefill_s,
        decode_no,
        prefill_no,
        mem,
        relief,
        shared,
        host,
        config.footprint,
    )
