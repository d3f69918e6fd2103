"""Small synthetic edge packages for the memory_sched tests: real weight files and manifests,
written with `edge.format.WeightFileWriter`, laid out like an exported model (GGUF-style names,
a tied head that reads the embedding from `embed.bin`, an int4 tensor in every block)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from edge import format as fmt
from edge.format import Manifest, ModelSpec, PartEntry, TokenizerInfo, WeightFileWriter

HIDDEN = 64
FFN = 96


def _block_tensors(
    rng: np.random.Generator, i: int
) -> dict[str, tuple[np.ndarray, str | None, tuple[int, ...] | None]]:
    def f32(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    packed = rng.integers(0, 256, size=(FFN, 33), dtype=np.uint8)  # int4 [96, 65]
    return {
        f"blk.{i}.attn_norm.weight": (f32(HIDDEN), None, None),
        f"blk.{i}.ffn_norm.weight": (f32(HIDDEN), None, None),
        f"blk.{i}.attn_qkv.weight": (f32(HIDDEN, 3 * HIDDEN), None, None),
        f"blk.{i}.attn_output.weight": (f32(HIDDEN, HIDDEN), None, None),
        f"blk.{i}.ffn_gate_up.weight": (f32(HIDDEN, 2 * FFN), None, None),
        f"blk.{i}.ffn_down.weight.q4": (packed, "int4", (FFN, 65)),
        f"blk.{i}.ffn_down.weight.scales": (f32(FFN * 3), None, None),
    }


def write_package(root: Path, num_layers: int = 4, seed: int = 0) -> Path:
    """A package with `embed`, `block.0..n-1` and a tied `head`; returns `root`."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    vocab = 128
    parts: list[PartEntry] = []
    with WeightFileWriter(root, "embed.bin") as out:
        embed = out.add("token_embd.weight", rng.standard_normal((vocab, HIDDEN), np.float32))
    parts.append(PartEntry("embed", "embed", "embed.onnx", (embed,), ("input_ids",), ("hidden.0",)))
    for i in range(num_layers):
        with WeightFileWriter(root, f"block.{i:03d}.bin") as out:
            entries = tuple(
                out.add(name, array, dtype, shape)
                for name, (array, dtype, shape) in _block_tensors(rng, i).items()
            )
        parts.append(
            PartEntry(
                f"block.{i}",
                "block",
                f"block.{i}.onnx",
                entries,
                (f"hidden.{i}",),
                (f"hidden.{i + 1}",),
                block_index=i,
            )
        )
    with WeightFileWriter(root, "head.bin") as out:
        norm = out.add("output_norm.weight", rng.standard_normal(HIDDEN).astype(np.float32))
    parts.append(
        PartEntry(
            "head", "head", "head.onnx", (norm, embed), (f"hidden.{num_layers}",), ("logits",)
        )
    )
    spec = ModelSpec(
        "llama", vocab, HIDDEN, FFN, num_layers, 4, 2, HIDDEN // 4, 10000.0, 1e-5, 256, True
    )
    (root / "tokenizer.json").write_text("{}", encoding="utf-8")
    files = tuple(fmt.describe_file(root, p.name) for p in sorted(root.iterdir()))
    manifest = Manifest(
        spec, tuple(parts), TokenizerInfo("tokenizer.json", None, None, None, ()), files
    )
    fmt.write_manifest(root, manifest)
    return root


@pytest.fixture
def make_package(tmp_path: Path) -> Callable[..., Path]:
    """`make_package(num_layers=4, seed=0, where=None)`: a fresh synthetic package."""
    count = 0

    def make(num_layers: int = 4, seed: int = 0, where: Path | None = None) -> Path:
        nonlocal count
        count += 1
        return write_package((where or tmp_path) / f"pkg{count}", num_layers, seed)

    return make


@pytest.fixture
def package(make_package: Callable[..., Path]) -> Path:
    return make_package()


def direct_io_works(directory: Path) -> str | None:
    """None when O_DIRECT reads work in `directory`, else why not (for a skip reason)."""
    if not hasattr(os, "O_DIRECT"):
        return "this platform has no O_DIRECT"
    probe = directory / "odirect.probe"
    probe.write_bytes(b"\1" * 8192)
    try:
        fd = os.open(probe, os.O_RDONLY | os.O_DIRECT)
    except OSError as exc:
        return f"O_DIRECT refused by the filesystem of {directory}: {exc.strerror}"
    try:
        import mmap

        buffer = mmap.mmap(-1, 4096)
        os.preadv(fd, [buffer], 0)
    except OSError as exc:
        return f"O_DIRECT reads fail in {directory}: {exc.strerror}"
    finally:
        os.close(fd)
        probe.unlink()
    return None


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    """A directory on a real disk (not tmpfs) for O_DIRECT, or a skip saying why not."""
    for base in ("/var/tmp", tempfile.gettempdir(), str(Path.home())):
        if not os.path.isdir(base) or not os.access(base, os.W_OK):
            continue
        with tempfile.TemporaryDirectory(dir=base, prefix="edge-odirect-") as where:
            if direct_io_works(Path(where)) is None:
                yield Path(where)
                return
    pytest.skip("no writable directory here supports O_DIRECT reads (tmpfs only?)")


@pytest.fixture
def tmpfs_dir() -> Iterator[Path]:
    """A directory on tmpfs, where O_DIRECT is refused, or a skip saying why not."""
    base = Path("/dev/shm")
    if not base.is_dir() or not os.access(base, os.W_OK):
        pytest.skip("no writable /dev/shm (tmpfs) on this machine")
    with tempfile.TemporaryDirectory(dir=base, prefix="edge-tmpfs-") as where:
        if direct_io_works(Path(where)) is None:
            pytest.skip("/dev/shm accepts O_DIRECT here, so the fallback cannot be tested")
        yield Path(where)
