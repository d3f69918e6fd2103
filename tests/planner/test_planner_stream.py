"""Streamed plans agree with the streamed engine: the planner recomputes the engine's pinning
from the manifest alone (to stay pure), so for every budget it must pin, stream and size the
window exactly as `StreamConfig.plan` (the streamed backend's sizing) does, and state the
same minimum."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devices.profiles import DeviceProfile
from edge.errors import BudgetTooSmallError
from edge.package import Package
from edge.package_files import PackageFiles
from edge.planner import Device, PlanConfig, make_plan, stream_minimum
from edge.planner.machine import import_footprint
from edge.streaming import StreamConfig

MAX_CONTEXT = 512
CPU = DeviceProfile("cpu", "cpu", 16 << 30, 20.0, 200.0, 800.0, 4, "published spec: test CPU")


def _package(tmp_path: Path, manifest) -> Package:
    """A Package the engine's planning accepts: it reads only the manifest and the size of
    tokenizer.json (a sparse file of the manifest's size)."""
    size = next(f.size for f in manifest.files if f.path == "tokenizer.json")
    with open(tmp_path / "tokenizer.json", "wb") as f:
        f.truncate(size)
    return Package(tmp_path, manifest, PackageFiles(tmp_path, ["tokenizer.json"]))


@pytest.mark.parametrize("quant", ["fp32", "int4"])
def test_planner_stream_matches_engine(quant: str, manifest_factory, tmp_path: Path) -> None:
    manifest = manifest_factory(layers=12, hidden=512, ffn=2048, vocab=32000, quant=quant)
    package = _package(tmp_path, manifest)
    footprint = import_footprint()  # what the engine admits budgets with, passed in
    minimum = stream_minimum(
        manifest, max_context=MAX_CONTEXT, prefill_chunk=64, footprint=footprint
    )
    with pytest.raises(BudgetTooSmallError) as info:
        StreamConfig(minimum - 1, max_context=MAX_CONTEXT).plan(package)
    assert info.value.minimum == minimum
    config = PlanConfig(max_context=MAX_CONTEXT, mode="streamed", footprint=footprint)
    blocks = sum(p.nbytes for p in manifest.blocks)
    for extra in (0, blocks // 8, blocks // 3, blocks // 2, 2 * blocks):
        budget = minimum + extra
        engine = StreamConfig(budget, max_context=MAX_CONTEXT).plan(package)
        plan = make_plan(manifest, [Device(CPU, "ort_cpu", budget)], config)
        streaming = plan.streaming
        assert streaming is not None and streaming.budget == budget
        assert set(streaming.pinned) == set(engine.policy.pinned)
        assert streaming.streamed == engine.policy.streamed
        assert streaming.window == engine.policy.window
        assert streaming.pool_bytes == engine.pool_bytes
        assert streaming.engine_minimum == minimum
        # The engine's fixed runtime allowance is conservative from a cold page cache but a few
        # MiB short where the libraries were just installed (hot pages map in larger pieces,
        # which the planner measures): the streaming issue's bound is budget + 10%.
        assert plan.peak_bytes <= 1.10 * budget, "the prediction exceeds the budget + 10%"
    assert os.path.getsize(tmp_path / "tokenizer.json") > 0


def test_planner_sizes_the_context_as_the_engine_does(manifest_factory, tmp_path: Path) -> None:
    """A budget that holds a 1024-token KV cache but not the default 4096: with no context
    chosen, the engine shortens the window to fit (`StreamConfig.sized_for`) and the plan
    says the same context, with a note, instead of refusing."""
    manifest = manifest_factory(layers=12, hidden=512, ffn=2048, vocab=32000, quant="fp32")
    footprint = import_footprint()
    budget = stream_minimum(manifest, max_context=1024, prefill_chunk=64, footprint=footprint)
    engine = StreamConfig(budget).sized_for(_package(tmp_path, manifest))
    plan = make_plan(manifest, [Device(CPU, "ort_cpu", budget)], PlanConfig(footprint=footprint))
    assert plan.mode == "streamed" and plan.max_context == engine.max_context == 1024
    assert any("context window 1024 tokens" in note for note in plan.notes)
