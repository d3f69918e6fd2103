"""Memory budgets at load: refused below the minimum with the minimum stated, honoured exactly
at it, written the ways a user writes sizes; and `StreamConfig` refusing bad values by name."""

from __future__ import annotations

from pathlib import Path

import pytest

import edge
from edge.errors import BudgetTooSmallError, ConfigError
from edge.package import open_package
from edge.streaming import StreamConfig, streamed_state
from memory_sched.budget import GiB, MemoryBudget, MiB, format_size, system_memory


def _load(root: Path, budget: int | str, streaming) -> edge.Model:
    return edge.load(
        root,
        memory_budget=budget,
        max_context=streaming.MAX_CONTEXT,
        progress=False,
        verify="sizes",
    )


def test_streaming_budget_minimum_is_stated_and_exact(
    streaming_int4_package: Path, streaming
) -> None:
    """`edge.load(memory_budget=...)` under the minimum raises BudgetTooSmallError before any
    weights are read, its message stating the budget and the minimum (readable and in bytes);
    one byte under the minimum is refused too, and exactly the minimum loads, streams every
    block and the head's row slices through a window of one and generates 4 tokens equal to
    the all-pinned run's."""
    with pytest.raises(BudgetTooSmallError) as info:
        _load(streaming_int4_package, "50MB", streaming)
    minimum = info.value.minimum
    assert minimum == streaming.minimum_budget(open_package(streaming_int4_package))
    assert info.value.budget == 50_000_000
    message = str(info.value)
    assert f"{format_size(50_000_000)} is too small" in message
    assert f"the minimum is {format_size(minimum)} ({minimum} bytes)" in message
    with pytest.raises(BudgetTooSmallError, match=f"{minimum} bytes"):
        _load(streaming_int4_package, minimum - 1, streaming)

    model = _load(streaming_int4_package, minimum, streaming)
    try:
        plan = streamed_state(model.engine).plan
        assert plan.policy.window == 1
        slices = sum(u.kind == "head" for u in plan.units)  # the head streams too, by rows
        assert len(plan.policy.streamed) == model.spec.num_layers + slices and slices >= 2
        tokens = streaming.greedy_tokens(model, n=4)
    finally:
        model.engine.close()
    pinned = _load(streaming_int4_package, streaming.EVERYTHING_PINNED, streaming)
    assert streamed_state(pinned.engine).prefetcher is None
    assert tokens == streaming.greedy_tokens(pinned, n=4)


def test_streaming_budget_strings_parse() -> None:
    """Budgets are bytes or strings: decimal and binary units, bare letters binary like
    `docker --memory`, and a percentage of this machine's physical memory."""
    assert StreamConfig("300MB").budget.limit == 300_000_000
    assert StreamConfig("1.5GiB").budget.limit == 3 * GiB // 2
    assert StreamConfig("512M").budget.limit == 512 * MiB
    assert StreamConfig(123_456_789).budget.limit == 123_456_789
    assert StreamConfig("25%").budget == MemoryBudget(system_memory() // 4)
    assert StreamConfig(" 50 % ").budget == MemoryBudget(system_memory() // 2)
    assert StreamConfig(MemoryBudget(7 * MiB)).budget.limit == 7 * MiB


def test_streaming_budget_percent_loads(streaming_int4_package: Path, streaming) -> None:
    """`edge.load(memory_budget="25%")` takes a quarter of physical memory, which holds all of
    SmolLM2 int4: nothing streams."""
    model = _load(streaming_int4_package, "25%", streaming)
    assert streamed_state(model.engine).budget == system_memory() // 4
    assert streamed_state(model.engine).prefetcher is None


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"max_context": 0}, "max_context=0"),
        ({"max_context": -8}, "max_context=-8"),
        ({"prefill_chunk": 0}, "prefill_chunk=0"),
        ({"max_window": 0}, "max_window=0"),
        ({"threads": 0}, "threads=0"),
        ({"budget": "lots"}, "'lots'"),
        ({"budget": "300 parsecs"}, "'parsecs'"),
        ({"budget": "150%"}, "'150%'"),
        ({"budget": 0}, "got 0"),
        ({"budget": -1}, "-1"),
        ({"budget": True}, "True"),
        ({"kv_dtype": "int4"}, "'int4'"),
    ],
)
def test_streaming_config_rejects_bad_values(kwargs: dict[str, object], named: str) -> None:
    """Each bad StreamConfig value raises ConfigError (an EdgeError and a ValueError) whose
    message names the value."""
    fields = {"budget": "300MB", **kwargs}
    with pytest.raises(ConfigError) as info:
        StreamConfig(**fields)  # type: ignore[arg-type]
    assert named in str(info.value)
    assert isinstance(info.value, ValueError)


def test_streaming_load_rejects_garbage_budget(streaming_int4_package: Path, streaming) -> None:
    """`edge.load(memory_budget="plenty")` raises ConfigError naming the string, before any
    engine is built."""
    with pytest.raises(ConfigError, match="'plenty'"):
        _load(streaming_int4_package, "plenty", streaming)


def test_a_budget_too_small_for_the_context_names_one_that_fits(
    streaming_int4_package: Path,
) -> None:
    """Under the minimum at a 4096-token context, the error names the longest context whose
    smaller KV cache would fit the budget, and that context then loads."""
    root = streaming_int4_package
    with pytest.raises(BudgetTooSmallError) as first:
        edge.load(root, memory_budget="1MB", max_context=4096, progress=False, verify="sizes")
    budget = first.value.minimum - 1
    with pytest.raises(BudgetTooSmallError) as info:
        edge.load(
            root,
            memory_budget=budget,
            max_context=4096,
            progress=False,
            verify="sizes",
        )
    message = str(info.value)
    assert "a context of" in message and "fits (--ctx" in message
    context = int(message.split("a context of ")[1].split()[0])
    assert 256 <= context < 4096 and context % 256 == 0
    model = edge.load(
        root,
        memory_budget=budget,
        max_context=context,
        progress=False,
        verify="sizes",
    )
    model.engine.close()


def test_a_budget_too_small_for_the_default_context_shortens_it(
    streaming_int4_package: Path, streaming, caplog: pytest.LogCaptureFixture
) -> None:
    """Without max_context, a budget that cannot hold the default context's KV cache loads
    with the longest context that fits, says so on the log, and decodes the same text as a
    budget that pins everything (the same kernels; int4 is compared within them)."""
    from edge.engine import default_context

    root = streaming_int4_package
    package = open_package(root, verify="sizes")
    default = default_context(package.spec)
    package.close()
    with pytest.raises(BudgetTooSmallError) as first:
        edge.load(root, memory_budget="1MB", max_context=default, progress=False, verify="sizes")
    budget = first.value.minimum - 1  # the default context no longer fits
    with caplog.at_level("WARNING", logger="edge.streaming.config"):
        model = edge.load(root, memory_budget=budget, progress=False, verify="sizes")
    try:
        assert 256 <= model.engine.max_context < default
        assert f"context window {model.engine.max_context} tokens, not {default}" in caplog.text
        streamed = model.generate("The capital of France is", max_tokens=12, temperature=0)
    finally:
        model.engine.close()
    pinned = edge.load(root, memory_budget=streaming.EVERYTHING_PINNED, progress=False)
    try:
        assert pinned.generate("The capital of France is", max_tokens=12, temperature=0) == (
            streamed
        )
    finally:
        pinned.engine.close()


def test_a_streamed_kv_cache_is_float16_and_halves_the_floor(
    streaming_int4_package: Path, streaming
) -> None:
    """A streamed run keeps keys and values as float16 unless told float32 or int8 (`edge.load(
    ..., kv_dtype=)`, `--kv-dtype`): its KV cache is half a float32 one (int8 with its scales:
    17/64), the smallest budget it accepts is lower by exactly the difference, and it decodes
    what the float32 cache decodes here. ONNX Runtime's attention takes float32 only: a
    resident float16 cache is refused by name."""
    from edge.kv_cache import KV_DTYPES
    from memory_sched.sizing import kv_cache_bytes

    root = streaming_int4_package
    package = open_package(root, verify="sizes")
    spec, context = package.spec, 1024
    floors = {
        dtype: streaming.minimum_budget(package, max_context=context, kv_dtype=dtype)
        for dtype in KV_DTYPES
    }
    package.close()
    for dtype in ("float16", "int8"):
        saved = kv_cache_bytes(spec, context, 4) - kv_cache_bytes(spec, context, KV_DTYPES[dtype])
        assert floors["float32"] - floors[dtype] == saved
    with pytest.raises(ConfigError, match=r"kv_dtype='float16'.*ort_cpu"):
        edge.load(root, kv_dtype="float16", progress=False, verify="sizes")
    texts = {}
    for dtype in (None, "float32", "int8"):
        model = edge.load(
            root,
            memory_budget=streaming.EVERYTHING_PINNED,
            max_context=context,
            kv_dtype=dtype,
            progress=False,
            verify="sizes",
        )
        try:
            cache = model.engine.cache
            assert cache.element_bytes == KV_DTYPES[dtype or "float16"]
            assert cache.nbytes == kv_cache_bytes(spec, cache.max_context, cache.element_bytes)
            texts[dtype] = model.generate("The capital of France is", max_tokens=12, temperature=0)
        finally:
            model.engine.close()
    assert texts[None] == texts["float32"] == texts["int8"]
