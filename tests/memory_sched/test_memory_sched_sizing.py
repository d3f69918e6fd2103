"""plan_stream: package + budget -> units, pinned bytes (a tied embedding counted once), the
window the budget allows, and a working prefetcher; a budget too small fails stating the
minimum."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edge.errors import BudgetTooSmallError, ConfigError, PackageError
from edge.format import TensorEntry, read_manifest
from edge.package_files import PackageFiles
from memory_sched import MemoryBudget, plan_stream
from memory_sched.sizing import unique_bytes
from memory_sched.store import plan_layout
from memory_sched.units import head_row_ranges, split_head

OVERHEAD = 1000


def map_tensor(root: Path, entry: TensorEntry) -> np.ndarray:
    """`entry` mapped through the package's own file access (as `Package.tensor` maps it)."""
    return PackageFiles(root, [entry.file]).map(entry)


def _plan(root: Path, budget: int, **kwargs):
    return plan_stream(
        read_manifest(root),
        MemoryBudget(budget),
        kv_cache=5000,
        activations=700,
        runtime_overhead=OVERHEAD,
        **kwargs,
    )


def test_window_grows_with_the_budget(package: Path) -> None:
    manifest = read_manifest(package)
    pinned = unique_bytes([manifest.part("embed"), manifest.part("head")])
    embed = manifest.part("embed").nbytes
    assert pinned == embed + manifest.part("head").tensors[0].nbytes  # tied: embed once
    unit = plan_layout(manifest.part("block.0")).buffer_bytes
    fixed = pinned + 5000 + 700 + OVERHEAD
    for window in (1, 2, 3, 4):
        plan = _plan(package, fixed + window * unit + unit // 2)
        assert plan.policy.window == window and plan.unit_bytes == unit
        assert plan.pinned_bytes == pinned and plan.pool_bytes == window * unit
        assert plan.policy.streamed == ("block.0", "block.1", "block.2", "block.3")
    assert _plan(package, 10**12).policy.keeps_all
    assert _plan(package, 10**12, max_window=2).policy.window == 2


def test_too_small_budget_states_the_minimum(package: Path) -> None:
    manifest = read_manifest(package)
    unit = plan_layout(manifest.part("block.0")).buffer_bytes
    minimum = unique_bytes([manifest.part("embed"), manifest.part("head")]) + 5700 + OVERHEAD
    with pytest.raises(BudgetTooSmallError, match=str(minimum + unit)):
        _plan(package, minimum + unit - 1)


def test_half_blocks_halve_the_unit(package: Path) -> None:
    whole = _plan(package, 10**9)
    halves = _plan(package, 10**9, split_blocks=True, pinned=("embed", "head", "block.0"))
    assert halves.unit_bytes < whole.unit_bytes
    assert {"block.0.attn", "block.0.mlp"} <= halves.policy.pinned
    assert halves.policy.streamed[:2] == ("block.1.attn", "block.1.mlp")


def test_pinned_must_be_a_unit(package: Path) -> None:
    with pytest.raises(ConfigError, match=r"'block\.9' is not a unit"):
        _plan(package, 10**9, pinned=("block.9",))
    with pytest.raises(ConfigError, match="max_window"):
        _plan(package, 10**9, max_window=0)


def test_plan_prefetcher_streams_a_step(package: Path) -> None:
    plan = _plan(package, 10**9, split_blocks=True, max_window=3)
    manifest = read_manifest(package)
    with plan.prefetcher(package) as prefetcher:
        for unit in plan.streamed_units:
            weights = prefetcher.acquire(unit.name)
            for tensor in unit.tensors:
                assert weights[tensor.name].tobytes() == map_tensor(package, tensor).tobytes()
            prefetcher.release(unit.name)
    assert len(plan.streamed_units) == 2 * len(manifest.blocks)


def test_the_head_streams_in_slices_of_its_rows(package: Path) -> None:
    """Each slice of the tied float [V, H] head is its rows' bytes in the file, the final norm
    goes with every slice, and the slices run after the blocks through the same window."""
    manifest = read_manifest(package)
    head, vocab = manifest.part("head"), manifest.spec.vocab_size
    norm, table = head.tensors
    slices = split_head(head, vocab, 3)
    assert [s.name for s in slices] == ["head.0", "head.1", "head.2"]
    rows = map_tensor(package, table)
    for unit, (a, b) in zip(slices, head_row_ranges(vocab, 3), strict=True):
        kept_norm, piece = unit.tensors
        assert kept_norm == norm and piece.shape == (b - a, table.shape[1])
        assert np.array_equal(map_tensor(package, piece), rows[a:b])
    plan = _plan(package, 10**9, pinned=("embed",), head_slices=3, max_window=2)
    assert plan.policy.streamed[-4:] == ("block.3", "head.0", "head.1", "head.2")


def test_a_head_stored_by_columns_cannot_stream(package: Path) -> None:
    """A float MatMul head is [H, V]: a row of the vocabulary is scattered, so it stays pinned."""
    head = read_manifest(package).part("head")
    norm, table = head.tensors
    columns = replace(head, tensors=(norm, replace(table, shape=table.shape[::-1])))
    with pytest.raises(PackageError, match="not stored by output rows"):
        split_head(columns, 128, 2)
