"""The sliding-window policy, checked as properties over many shapes: never more than `window`
streamed units resident, every unit read before it runs, reads in cyclic order across steps,
the window keeps everything when it is as large as the model."""

from __future__ import annotations

import itertools

import pytest

from edge.architectures import QK_NORMS, SANDWICH_NORMS
from edge.errors import BudgetTooSmallError, ConfigError, PackageError
from edge.format import PartEntry, TensorEntry
from memory_sched.units import split_block, stream_units
from memory_sched.window import WindowPolicy, window_size


def _order(blocks: int) -> tuple[str, ...]:
    return ("embed", *(f"block.{i}" for i in range(blocks)), "head")


SHAPES = [
    (blocks, window, pinned)
    for blocks in (1, 2, 3, 5, 8)
    for window in range(1, blocks + 1)
    for pinned in (frozenset(), frozenset({"embed", "head"}), frozenset({"embed", "block.0"}))
    if len(pinned & set(_order(blocks))) < blocks + 2
]


def _simulate(policy: WindowPolicy, steps: int):
    """Run the policy like an engine: yields (unit, loaded streamed units, reads so far)."""
    reads = list(policy.initial_reads())
    loaded = set(reads)
    for _ in range(steps):
        for unit in policy.order:
            yield unit, frozenset(loaded), tuple(reads)
            for gone in policy.evictions_after(unit):
                loaded.remove(gone)
            for new in policy.reads_after(unit):
                assert new not in loaded
                loaded.add(new)
                reads.append(new)


@pytest.mark.parametrize(("blocks", "window", "pinned"), SHAPES)
def test_window_properties(blocks: int, window: int, pinned: frozenset[str]) -> None:
    policy = WindowPolicy(_order(blocks), window, pinned)
    streamed = policy.streamed
    for unit, loaded, _ in _simulate(policy, steps=3):
        # never more than `window` unpinned units resident
        assert len(loaded) <= window and not loaded & pinned
        # the unit about to run is resident (read before it is acquired)
        if unit not in pinned:
            assert unit in loaded
        # the policy's own view agrees with the simulation
        assert loaded == set(policy.window_at(unit))
        assert policy.resident(unit) == pinned | loaded
        if streamed and unit not in pinned:
            assert policy.window_at(unit)[0] == unit


@pytest.mark.parametrize(("blocks", "window", "pinned"), SHAPES)
def test_reads_follow_cyclic_order(blocks: int, window: int, pinned: frozenset[str]) -> None:
    policy = WindowPolicy(_order(blocks), window, pinned)
    streamed = policy.streamed
    *_, (_, _, reads) = _simulate(policy, steps=4)
    if policy.keeps_all:
        assert reads == streamed  # each read once, never evicted
        assert tuple(policy.read_sequence()) == streamed
    else:
        # after the last streamed unit comes the first one of the next step
        assert list(reads) == [streamed[i % len(streamed)] for i in range(len(reads))]
        assert list(itertools.islice(policy.read_sequence(), len(reads))) == list(reads)
        assert len(reads) >= 3 * len(streamed) + window  # steps 1..3 read fully, and ahead


def test_window_at_wraps_into_next_step() -> None:
    policy = WindowPolicy(_order(4), 3, frozenset({"embed", "head"}))
    assert policy.window_at("block.3") == ("block.3", "block.0", "block.1")
    assert policy.window_at("head") == ("block.0", "block.1", "block.2")
    assert policy.window_at("embed") == ("block.0", "block.1", "block.2")
    assert policy.reads_after("block.2") == ("block.1",)
    assert policy.evictions_after("head") == () and policy.reads_after("embed") == ()


def test_all_pinned_streams_nothing() -> None:
    policy = WindowPolicy(("a", "b"), 1, frozenset({"a", "b"}))
    assert policy.streamed == () and policy.window_at("a") == () and policy.initial_reads() == ()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"order": (), "window": 1}, "non-empty"),
        ({"order": ("a", "a"), "window": 1}, r"\['a'\] more than once"),
        ({"order": ("a",), "window": 0}, "window must be an int >= 1, got 0"),
        ({"order": ("a",), "window": True}, "window must be an int"),
        ({"order": ("a", "b"), "window": 3}, "window 3 exceeds the 2 streamed"),
        ({"order": ("a",), "window": 1, "pinned": {"z"}}, r"pinned units \['z'\]"),
    ],
)
def test_policy_validation_names_the_bad_value(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        WindowPolicy(**kwargs)


def test_unknown_unit_is_an_error() -> None:
    with pytest.raises(ConfigError, match="'nope' is not in the order"):
        WindowPolicy(("a", "b"), 1).window_at("nope")


def test_window_size_from_bytes() -> None:
    assert window_size(1000, [100, 300, 250]) == 3
    assert window_size(599, {"a": 300, "b": 100}) == 1
    assert window_size(10**9, [100, 300]) == 2  # capped at the number of units
    assert window_size(5, [0, 0]) == 2 and window_size(5, []) == 0
    with pytest.raises(BudgetTooSmallError, match="largest needs 300") as info:
        window_size(299, [100, 300])
    assert info.value.minimum == 300


def _block(i: int, names: list[str]) -> PartEntry:
    tensors = tuple(
        TensorEntry(f"blk.{i}.{n}", "float32", (4,), f"block.{i:03d}.bin", k * 65536, 16)
        for k, n in enumerate(names)
    )
    return PartEntry(f"block.{i}", "block", f"block.{i}.onnx", tensors, (), (), block_index=i)


def test_half_blocks_are_just_more_units() -> None:
    names = [
        "attn_norm.weight",
        "ffn_norm.weight",
        "attn_q.weight",
        "attn_q.bias",
        "attn_output.weight",
        "ffn_gate.weight",
        "ffn_down.weight.q4",
    ]
    embed = PartEntry("embed", "embed", "embed.onnx", (), (), ())
    units = stream_units([embed, _block(0, names), _block(1, names)], split_blocks=True)
    assert [u.name for u in units] == [
        "embed",
        "block.0.attn",
        "block.0.mlp",
        "block.1.attn",
        "block.1.mlp",
    ]
    attn, mlp = split_block(_block(0, names))
    assert len(attn.tensors) == 4 and len(mlp.tensors) == 3
    policy = WindowPolicy(tuple(u.name for u in units), 2, frozenset({"embed"}))
    assert policy.window_at("block.0.mlp") == ("block.0.mlp", "block.1.attn")


def test_gemma3_block_splits_with_its_extra_norms() -> None:
    """Gemma 3's q/k norms and sandwich norms land in the half that applies them."""
    names = [
        "attn_norm.weight",
        "attn_qkv.weight",
        "attn_output.weight",
        *QK_NORMS,
        "ffn_norm.weight",
        "ffn_gate_up.weight",
        "ffn_down.weight",
    ]
    attention_norm, ffw_norm = SANDWICH_NORMS
    attn, mlp = split_block(_block(0, [*names, attention_norm, ffw_norm]))
    local = [{t.name.split(".", 2)[-1] for t in half.tensors} for half in (attn, mlp)]
    assert local[0] == {*names[:5], attention_norm}
    assert local[1] == {*names[5:], ffw_norm}


def test_unsplittable_block_names_the_tensor() -> None:
    with pytest.raises(PackageError, match=r"'blk\.0\.rope_freqs'"):
        split_block(_block(0, ["attn_norm.weight", "rope_freqs", "ffn_up.weight"]))
    with pytest.raises(PackageError, match="no mlp tensors"):
        split_block(_block(0, ["attn_norm.weight"]))
