"""ONNX Runtime's packed weights stored in edge's cache and mapped back
(devices/backends/ort_prepacked.py): the same logits as packing on the heap, built once,
rebuilt when a stored file changes, never built for an unchecked package or under "use", and
the heap path whenever the cache cannot hold a store."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from devices.backends.ort_prepacked import RECORD_FILE, PrepackedStore
from edge.engine import Engine, EngineConfig
from edge.errors import ConfigError
from edge.package import open_package
from tests.tiny_gguf import write_tiny_gguf

PROMPT = [5, 80, 17, 300, 42, 9]


@pytest.fixture(scope="module")
def tiny_int4(smollm2_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama as an int4 package: MatMulNBits, which ONNX Runtime packs."""
    pytest.importorskip("gguf")
    from exporters.export import ExportConfig, export

    folder = tmp_path_factory.mktemp("prepacked")
    gguf = write_tiny_gguf(smollm2_package / "tokenizer.json", folder / "tiny.gguf")
    return export(gguf, folder / "int4", ExportConfig(quant="int4"), progress=False)


@pytest.fixture(autouse=True)
def stores_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """The suite caps stores off (tests/conftest.py); these tests are about them."""
    monkeypatch.setenv("EDGE_PREPACKED_CACHE", "build")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "prepacked"


def _logits(package: Path, mode: str, verify: str = "auto") -> np.ndarray:
    """Prompt logits and three greedy steps' logits of a fresh engine."""
    engine = Engine(open_package(package, verify=verify), EngineConfig(prepacked_cache=mode))
    try:
        rows = [engine.prefill(PROMPT, all_logits=True)]
        for _ in range(3):
            rows.append(engine.decode(int(np.argmax(rows[-1][-1])))[None])
        return np.concatenate(rows)
    finally:
        engine.close()


def _stores(cache: Path) -> list[Path]:
    return (
        sorted(p for p in cache.iterdir() if not p.name.startswith(".")) if cache.is_dir() else []
    )


def test_a_stored_packing_gives_the_heap_paths_logits(tiny_int4: Path, cache: Path) -> None:
    heap = _logits(tiny_int4, "off")
    assert not _stores(cache)
    built = _logits(tiny_int4, "build")  # packs, stores, then maps the store
    (store,) = _stores(cache)
    record = (store / RECORD_FILE).read_text()
    data = (store / "segment.data").stat()
    mapped = _logits(tiny_int4, "build")  # maps what is stored: nothing rebuilt
    np.testing.assert_array_equal(built, heap)
    np.testing.assert_array_equal(mapped, heap)
    assert _stores(cache) == [store] and (store / RECORD_FILE).read_text() == record
    assert (store / "segment.data").stat().st_ino == data.st_ino
    assert PrepackedStore(store).valid()


def test_a_changed_store_is_rebuilt_not_loaded(tiny_int4: Path, cache: Path) -> None:
    heap = _logits(tiny_int4, "off")
    _logits(tiny_int4, "build")
    (store,) = _stores(cache)
    data = store / "segment.data"
    before = data.stat().st_ino
    with open(data, "r+b") as fh:  # a flipped byte in the packed copy or its source
        fh.seek(data.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    assert not PrepackedStore(store).valid()
    np.testing.assert_array_equal(_logits(tiny_int4, "build"), heap)
    assert data.stat().st_ino != before and PrepackedStore(store).valid()


def test_no_store_is_built_under_use_or_for_an_unchecked_package(
    tiny_int4: Path, cache: Path
) -> None:
    """ "use" (what a memory budget runs with: a build peaks above the heap path) maps only what
    is stored; a package opened with verify="sizes" has no checked hashes to key a store by."""
    heap = _logits(tiny_int4, "off")
    np.testing.assert_array_equal(_logits(tiny_int4, "use"), heap)
    np.testing.assert_array_equal(_logits(tiny_int4, "build", verify="sizes"), heap)
    assert not _stores(cache)
    _logits(tiny_int4, "build")
    np.testing.assert_array_equal(_logits(tiny_int4, "use"), heap)  # now mapped
    assert len(_stores(cache)) == 1


def test_a_cache_that_cannot_hold_a_store_falls_back_to_the_heap(
    tiny_int4: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("EDGE_CACHE_DIR", str(blocked))
    heap = _logits(tiny_int4, "off")
    with caplog.at_level("WARNING", logger="edge.devices"):
        np.testing.assert_array_equal(_logits(tiny_int4, "build"), heap)
    assert "cannot map packed weights" in caplog.text and "packing them on the heap" in caplog.text


def test_stores_of_removed_packages_are_pruned(
    tiny_int4: Path, cache: Path, tmp_path: Path
) -> None:
    """A store whose package folder is gone is removed when the next store is built."""
    import shutil

    copy = Path(shutil.copytree(tiny_int4, tmp_path / "copy"))
    _logits(copy, "build")
    (old,) = _stores(cache)
    shutil.rmtree(copy)
    _logits(tiny_int4, "build")
    (new,) = _stores(cache)
    assert new != old and str(tiny_int4) in (new / RECORD_FILE).read_text()


def test_edge_load_builds_by_default_and_never_under_a_memory_budget(
    tiny_int4: Path, tmp_path: Path
) -> None:
    """A planned run under a budget maps at most (a build would peak above the plan); the
    caller's "off" wins over everything. (edge's own cache, where the planner keeps this
    machine's measured profile; a copy of the package gives stores of its own.)"""
    import shutil

    import edge
    from edge.paths import cache_dir

    copy = Path(shutil.copytree(tiny_int4, tmp_path / "pkg"))

    def stores() -> list[Path]:
        found = _stores(cache_dir() / "prepacked")
        return [p for p in found if str(copy) in (p / RECORD_FILE).read_text()]

    planned = edge.load(copy, plan="auto", memory_budget="4GB", progress=False)
    assert planned.engine.config.prepacked_cache == "use" and not stores()
    edge.load(copy, prepacked_cache="off", progress=False)
    assert not stores()
    edge.load(copy, progress=False)
    assert len(stores()) == 1


def test_no_store_is_built_without_the_memory_a_build_peaks_at(
    tiny_int4: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A machine whose available memory is below a build's peak (here: a build factor no
    machine has) loads on the heap, as before stores existed."""
    from devices.backends import ort_cpu

    monkeypatch.setattr(ort_cpu, "BUILD_PEAK_FACTOR", float(1 << 40))
    np.testing.assert_array_equal(_logits(tiny_int4, "build"), _logits(tiny_int4, "off"))
    assert not _stores(cache)


def test_the_environment_caps_every_load(
    tiny_int4: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EDGE_PREPACKED_CACHE=off: nothing stored or mapped, whatever a load asks for."""
    monkeypatch.setenv("EDGE_PREPACKED_CACHE", "off")
    np.testing.assert_array_equal(_logits(tiny_int4, "build"), _logits(tiny_int4, "off"))
    assert not _stores(cache)
    monkeypatch.setenv("EDGE_PREPACKED_CACHE", "sometimes")
    with pytest.raises(ConfigError, match="EDGE_PREPACKED_CACHE='sometimes'"):
        _logits(tiny_int4, "build")


def test_no_store_is_built_where_it_would_crowd_the_disk(
    tiny_int4: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store is built only where it leaves 5% of the disk (at least 1 GiB) free: here a
    share of the whole disk no store can leave."""
    from devices.backends import ort_cpu

    monkeypatch.setattr(ort_cpu, "DISK_KEPT_SHARE", 1.0)
    np.testing.assert_array_equal(_logits(tiny_int4, "build"), _logits(tiny_int4, "off"))
    assert not _stores(cache)


def test_wide_matrices_load_in_row_slices_with_the_same_logits(
    tiny_int4: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the slice limit below the tiny head's size, a load that stores or maps the packing
    takes the head as row slices (devices/backends/row_slices.py): the logits of the whole
    head, bit for bit. The heap path keeps it whole."""
    import devices.backends.row_slices as row_slices

    whole = _logits(tiny_int4, "off")
    head = next(p for p in open_package(tiny_int4).manifest.parts if p.kind == "head")
    monkeypatch.setattr(row_slices, "SLICE_BYTES", sum(t.nbytes for t in head.tensors) // 3)
    np.testing.assert_array_equal(_logits(tiny_int4, "off"), whole)
    np.testing.assert_array_equal(_logits(tiny_int4, "build"), whole)
    (store,) = _stores(cache)
    assert b".rows0_" in (store / "segment.onnx").read_bytes()
    np.testing.assert_array_equal(_logits(tiny_int4, "build"), whole)  # mapped from the store
