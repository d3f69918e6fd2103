"""Each device's predicted peak memory under a split, with the single-device planner's memory
model (edge.planner.memory) for the context of a `PlanConfig` (default: a full cache): a
worker's process as it measured itself idle (interpreter and runtimes, `info()["idle_rss"]`),
plus its range as ONNX Runtime holds it in a `SliceRunner` (weights copied, the maps' pages a
load transient), or its tensor-parallel share (the slices copied, one block's maps while
loading), plus the KV pages of its blocks. A split where a device lacks the memory its share
adds is not feasible (`with_memory`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields as dataclass_fields
from dataclasses import replace as dataclass_replace

from edge.cluster.predict import HERE, Device, DeviceMemory, Prediction
from edge.package import Package
from edge.placement import DEFAULT_BACKEND, Placement
from edge.planner.costs import ModelCosts
from edge.planner.memory import (
    DEFAULT_FOOTPRINT,
    Breakdown,
    ImportFootprint,
    Span,
    process_base,
    resident_breakdown,
)
from edge.planner.plan import PlanConfig
from edge.planner.tables import Context


def memory_context(package: Package, plan: PlanConfig | None = None) -> Context:
    """The sizes memory is predicted for: `plan`'s context (default: a full cache of the
    engine's default context, prompts in 256-token chunks), as the single-device planner's."""
    from edge.planner.costs import model_costs
    from edge.planner.tables import resolve

    manifest = package.manifest
    return resolve(manifest, model_costs(manifest), plan or PlanConfig())


def _worker_process(device: Device, runtime: str, footprint: ImportFootprint) -> int:
    """A worker's process before its slice: its idle RSS, which holds the runtimes it imported
    at start; a runtime it did not import (or a worker that did not say) as measured here."""
    imports = {"ort_cpu": footprint.onnxruntime, "tensor": footprint.llvmlite}
    if device.idle_rss is None:
        return footprint.base + imports[runtime]
    return device.idle_rss + (0 if runtime in device.runtimes else imports[runtime])


def _worker_memory(
    device: Device, breakdown: Breakdown, runtime: str, footprint: ImportFootprint
) -> DeviceMemory:
    """A worker's plan: what its range or share adds, over its process (`_worker_process`)."""
    process = _worker_process(device, runtime, footprint)
    return DeviceMemory(
        device.name, dataclass_replace(breakdown, process=process), device.available
    )


def _here_breakdown(
    costs: ModelCosts, placement: Placement, ctx: Context, footprint: ImportFootprint
) -> Breakdown:
    """This machine's segments on ONNX Runtime in the coordinator's `Model`, as the single-device
    planner predicts them, over its libraries and tokenizer."""
    spans = [
        Span(seg.start, seg.end, seg.backend)
        for seg in placement.segments
        if seg.backend == DEFAULT_BACKEND
    ]
    breakdown = resident_breakdown(
        costs,
        spans,
        tokens=ctx.tokens,
        decoded=ctx.decoded,
        chunk=ctx.chunk,
        charge_runtime=(DEFAULT_BACKEND,) if spans else (),
    )
    return dataclass_replace(breakdown, process=process_base(costs, footprint))


def pipeline_memory(
    package: Package,
    placement: Placement,
    devices: Sequence[Device],
    ctx: Context,
    footprint: ImportFootprint = DEFAULT_FOOTPRINT,
) -> tuple[DeviceMemory, ...]:
    """Each device's predicted peak under a pipeline `placement`: this machine's segments in
    its `Model`; each worker's range as its `SliceRunner` loads it (`slice_breakdown`) over its
    process (`_worker_process`)."""
    from edge.cluster.slice_runner import slice_breakdown
    from edge.planner.costs import model_costs

    costs = model_costs(package.manifest)
    out = [
        DeviceMemory(HERE, _here_breakdown(costs, placement, ctx, footprint), devices[0].available)
    ]
    by_endpoint = {d.endpoint: d for d in devices[1:]}
    for seg in placement.segments:
        if seg.backend != "cluster":
            continue
        device = by_endpoint[str(dict(seg.options)["endpoint"])]
        breakdown = slice_breakdown(costs, seg.start, seg.end, ctx.tokens, ctx.decoded, ctx.chunk)
        out.append(_worker_memory(device, breakdown, DEFAULT_BACKEND, footprint))
    return tuple(out)


def tensor_memory(
    package: Package,
    placement: Placement,
    devices: Sequence[Device],
    ctx: Context,
    footprint: ImportFootprint = DEFAULT_FOOTPRINT,
) -> tuple[DeviceMemory, ...]:
    """Each device's predicted peak under a tensor-parallel `placement`: the shares its options
    name (`TensorBackend.load`'s split), each as `share_breakdown` predicts it; a worker's over
    its process, this machine's beside its embedding and head in its `Model`."""
    from edge.cluster.shard_runner import block_weights, share_breakdown, share_size
    from edge.cluster.shards import ffn_unit, split_shares
    from edge.cluster.tensor_backend import parse_weights, parse_workers
    from edge.planner.costs import model_costs

    costs = model_costs(package.manifest)
    spec = package.manifest.spec
    segment = next(seg for seg in placement.segments if seg.backend == "tensor")
    options = dict(segment.options)
    workers = parse_workers(str(options["workers"]))
    first = package.manifest.parts[segment.start].block_index or 0
    end = first + segment.end - segment.start
    unit = ffn_unit(next(block_weights(package, first, first + 1)))
    shares = split_shares(
        spec, parse_weights(str(options.get("weights", "")), 1 + len(workers)), unit
    )
    jit = footprint.jit
    sizes = [share_size(package, share, first, end) for share in shares]
    here = _here_breakdown(costs, placement, ctx, footprint)
    local = share_breakdown(spec, sizes[0], ctx.tokens, ctx.chunk, jit)
    here = _combined(here, dataclass_replace(local, process=footprint.llvmlite))
    out = [DeviceMemory(HERE, here, devices[0].available)]
    by_endpoint = {d.endpoint: d for d in devices[1:]}
    for ref, size in zip(workers, sizes[1:]):
        device = by_endpoint[ref.endpoint]
        breakdown = share_breakdown(spec, size, ctx.tokens, ctx.chunk, jit)
        out.append(_worker_memory(device, breakdown, "tensor", footprint))
    return tuple(out)


def _combined(a: Breakdown, b: Breakdown) -> Breakdown:
    """Two loads in one process, one after the other: what they hold adds up, their load
    transients do not overlap (the larger counts), nor their steps' temporaries."""
    summed = {
        f.name: getattr(a, f.name) + getattr(b, f.name)
        for f in dataclass_fields(Breakdown)
        if f.name not in ("transient", "load_relief", "activations")
    }
    return Breakdown(
        **summed,
        transient=max(a.transient - a.load_relief, b.transient - b.load_relief),
        activations=max(a.activations, b.activations),
    )


def with_memory(
    prediction: Prediction,
    package: Package,
    devices: Sequence[Device],
    ctx: Context,
    footprint: ImportFootprint = DEFAULT_FOOTPRINT,
) -> Prediction:
    """`prediction` with each device's predicted peak memory; infeasible (no placement) where
    a device lacks the memory its share adds."""
    if prediction.placement is None:
        return prediction
    of_mode = pipeline_memory if prediction.mode == "pipeline" else tensor_memory
    memory = of_mode(package, prediction.placement, devices, ctx, footprint)
    placement = prediction.placement if all(m.fits for m in memory) else None
    return dataclass_replace(prediction, placement=placement, memory=memory)
