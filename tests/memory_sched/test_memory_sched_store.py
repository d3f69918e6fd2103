"""WeightStore: parts read into preallocated buffers match `Package.tensor` byte for
byte, buffered and O_DIRECT alike; O_DIRECT falls back (with a reason) where refused; a
truncated or missing file is a `StreamReadError` naming the part and the file."""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ConfigError, PackageError, StreamReadError
from edge.format import TensorEntry, read_manifest
from edge.package_files import PackageFiles
from memory_sched import store as store_module
from memory_sched.store import (
    DIRECT_ALIGNMENT,
    WeightStore,
    allocate_buffer,
    plan_layout,
)
from memory_sched.units import split_block, stream_units


def map_tensor(root: Path, entry: TensorEntry) -> np.ndarray:
    """`entry` mapped through the package's own file access (as `Package.tensor` maps it)."""
    return PackageFiles(root, [entry.file]).map(entry)


def assert_matches_map_tensor(root: Path, store: WeightStore, name: str) -> None:
    buffer = allocate_buffer(store.buffer_bytes(name))
    weights = store.read_into(name, buffer)
    part = read_manifest(root).part(name) if "." not in name[6:] else None
    entries = part.tensors if part else [t for t, _ in store.layout(name).tensors]
    assert set(weights.tensors) == {t.name for t in entries}
    for entry in entries:
        expected = map_tensor(root, entry)
        got = weights[entry.name]
        assert got.dtype == expected.dtype and got.shape == expected.shape, entry.name
        assert got.tobytes() == expected.tobytes(), entry.name
        assert not got.flags.writeable
        assert np.shares_memory(got, buffer)  # a view, not a copy
    stats = weights.stats
    assert stats.part == name and stats.nbytes == store.layout(name).nbytes
    assert stats.start <= stats.end and stats.seconds == pytest.approx(stats.end - stats.start)


def test_buffered_reads_match_map_tensor(package: Path) -> None:
    # Small chunks so every part takes several preadv calls.
    store = WeightStore.from_package(package, chunk_bytes=4 * DIRECT_ALIGNMENT)
    assert store.names == ("embed", "block.0", "block.1", "block.2", "block.3", "head")
    for name in store.names:
        assert_matches_map_tensor(package, store, name)
    assert not store.direct and store.direct_fallback is None


def test_direct_reads_match_map_tensor(make_package, disk_dir: Path) -> None:
    root = make_package(where=disk_dir)
    store = WeightStore.from_package(root, direct=True, chunk_bytes=2 * DIRECT_ALIGNMENT)
    for name in store.names:
        assert_matches_map_tensor(root, store, name)
        assert store.read(name).stats.direct
    assert store.direct and store.direct_fallback is None


def test_direct_falls_back_on_tmpfs_with_a_reason(make_package, tmpfs_dir: Path) -> None:
    """A real refusal (tmpfs before Linux 6.6); skipped where tmpfs takes O_DIRECT."""
    root = make_package(where=tmpfs_dir)
    store = WeightStore.from_package(root, direct=True)
    assert_matches_map_tensor(root, store, "block.1")
    assert not store.direct
    assert "O_DIRECT" in store.direct_fallback and "block.001.bin" in store.direct_fallback
    assert not store.read("block.2").stats.direct


def test_tied_head_reads_two_files(package: Path) -> None:
    store = WeightStore.from_package(package)
    spans = store.spans("head")
    assert [s.file for s in spans] == ["head.bin", "embed.bin"]
    assert all(s.buffer_offset % DIRECT_ALIGNMENT == 0 for s in spans)
    assert_matches_map_tensor(package, store, "head")


def test_half_blocks_read_only_their_tensors(package: Path) -> None:
    manifest = read_manifest(package)
    attn, mlp = split_block(manifest.part("block.2"))
    assert attn.name == "block.2.attn" and mlp.name == "block.2.mlp"
    assert {t.name.split(".")[2] for t in attn.tensors} == {"attn_norm", "attn_qkv", "attn_output"}
    assert {t.name.split(".")[2] for t in mlp.tensors} == {"ffn_norm", "ffn_gate_up", "ffn_down"}
    # The MLP norm lies next to the attention norm, with attention weights after it: it is
    # its own extent, so the MLP half's buffer holds no attention bytes.
    store = WeightStore(package, stream_units(manifest.parts, split_blocks=True))
    assert len(store.spans("block.2.mlp")) > 1
    for name in ("block.2.attn", "block.2.mlp"):
        assert_matches_map_tensor(package, store, name)
    whole = plan_layout(manifest.part("block.2")).nbytes
    assert store.layout("block.2.attn").nbytes + store.layout("block.2.mlp").nbytes <= whole


def test_whole_block_is_one_contiguous_read(package: Path) -> None:
    store = WeightStore.from_package(package)
    (span,) = store.spans("block.0")
    assert span.file == "block.000.bin" and span.start == 0
    assert span.end == (package / "block.000.bin").stat().st_size


@pytest.mark.parametrize("direct", [False, True])
def test_truncated_file_names_part_and_file(make_package, disk_dir: Path, direct: bool) -> None:
    root = make_package(where=disk_dir)
    weight = root / "block.002.bin"
    os.truncate(weight, weight.stat().st_size - 5000)
    store = WeightStore.from_package(root, direct=direct)
    with pytest.raises(StreamReadError, match=r"'block\.2'.*block\.002\.bin.*truncated"):
        store.read("block.2")
    store.read("block.1")  # the others still read


def test_missing_file_names_the_file(package: Path) -> None:
    (package / "block.001.bin").unlink()
    with pytest.raises(PackageError, match=r"missing block\.001\.bin"):
        WeightStore.from_package(package)


def test_files_are_read_through_the_descriptors_opened_first(package: Path) -> None:
    """A file removed or replaced at its path after the store opened it is still the file
    read: a package swapped under a run cannot mix two packages' weights."""
    store = WeightStore.from_package(package)
    expected = store.read("block.1")["blk.1.attn_norm.weight"].copy()
    path = package / "block.001.bin"
    path.rename(package / "moved.bin")
    path.write_bytes(b"\xff" * (package / "moved.bin").stat().st_size)
    np.testing.assert_array_equal(store.read("block.1")["blk.1.attn_norm.weight"], expected)


def test_bad_buffers_are_refused(make_package, disk_dir: Path) -> None:
    root = make_package(where=disk_dir)
    store = WeightStore.from_package(root, direct=True)
    need = store.buffer_bytes("block.0")
    with pytest.raises(ConfigError, match="too small"):
        store.read_into("block.0", allocate_buffer(need - DIRECT_ALIGNMENT))
    with pytest.raises(ConfigError, match="aligned"):
        store.read_into("block.0", allocate_buffer(need + DIRECT_ALIGNMENT)[1 : need + 1])
    with pytest.raises(ConfigError, match="uint8"):
        store.read_into("block.0", np.zeros(need, np.float32))


def test_store_configuration_errors(package: Path) -> None:
    with pytest.raises(ConfigError, match="chunk_bytes"):
        WeightStore.from_package(package, chunk_bytes=1000)
    with pytest.raises(PackageError, match=r"no part 'block\.9'"):
        WeightStore.from_package(package).layout("block.9")
    with pytest.raises(PackageError, match="not a directory"):
        WeightStore(package / "nope", [])


def test_allocated_buffers_are_page_aligned() -> None:
    for size in (1, 4096, 70000):
        buffer = allocate_buffer(size)
        assert buffer.ctypes.data % DIRECT_ALIGNMENT == 0
        assert buffer.nbytes >= size and buffer.nbytes % DIRECT_ALIGNMENT == 0
        assert buffer.flags.writeable


def test_reads_real_smollm2_blocks_and_halves(smollm2_package: Path) -> None:
    """The exported SmolLM2 layout: a block is one read, halves split cleanly, bytes match
    (the session's shared fp32 package, read only)."""
    root = smollm2_package
    manifest = read_manifest(root)
    units = stream_units(manifest.parts[1:3], split_blocks=True)
    store = WeightStore(root, (*manifest.parts[1:3], *units))
    assert len(store.spans("block.0")) == 1
    for name in ("block.0", "block.0.attn", "block.1.mlp"):
        assert_matches_map_tensor(root, store, name)


def _refuse_direct_at_open(monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def fake_open(path, flags, *args, **kwargs):
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)


def _refuse_direct_at_read(monkeypatch: pytest.MonkeyPatch) -> None:
    real_read = store_module.pread_into

    def fake_read(fd: int, target: memoryview, offset: int) -> int:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_read(fd, target, offset)

    monkeypatch.setattr(store_module, "pread_into", fake_read)


@pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT on this platform")
@pytest.mark.parametrize("refuse", [_refuse_direct_at_open, _refuse_direct_at_read])
def test_direct_refused_falls_back_to_buffered(
    package: Path, monkeypatch: pytest.MonkeyPatch, refuse
) -> None:
    """Where the filesystem refuses O_DIRECT (at open, or only at the first read) the store
    reads buffered, records why, and every byte still matches."""
    refuse(monkeypatch)
    store = WeightStore.from_package(package, direct=True)
    assert store.direct
    assert_matches_map_tensor(package, store, "head")
    assert not store.direct
    assert "O_DIRECT refused" in store.direct_fallback
    assert "head.bin" in store.direct_fallback
    assert not store.read("block.0").stats.direct
