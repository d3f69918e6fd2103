"""Exports that cannot succeed fail with a typed error naming the problem, and destroy nothing."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from edge.errors import PackageError, UnsupportedModelError
from edge.package import open_package
from exporters.arch.llama import LlamaArchitecture
from exporters.export import export


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` with its bytes (None for directories)."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(root.rglob("*"))
    }


def _staging_leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name)


# ---- sources that are not models ------------------------------------------------------------


def _text_file(tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("just some text, not a model\n", encoding="utf-8")
    return path


def _empty_dir(tmp: Path) -> Path:
    path = tmp / "empty"
    path.mkdir()
    return path


def _missing(tmp: Path) -> Path:
    return tmp / "no-such-model.gguf"


def _hf_without_weights(tmp: Path) -> Path:
    path = tmp / "hf"
    path.mkdir()
    (path / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    return path


def _gguf_magic_only(tmp: Path) -> Path:
    path = tmp / "magic.gguf"
    path.write_bytes(b"GGUF")
    return path


@pytest.mark.parametrize(
    "make",
    [_text_file, _empty_dir, _missing, _hf_without_weights, _gguf_magic_only],
    ids=["text-file", "empty-dir", "missing", "hf-no-weights", "gguf-magic"],
)
def test_non_model_source_is_unsupported(tmp_path: Path, make) -> None:
    """A path that is neither a GGUF file nor a Hugging Face folder raises UnsupportedModelError."""
    source = make(tmp_path)
    out = tmp_path / "out" / "pkg"
    with pytest.raises(UnsupportedModelError, match=re.escape(source.name)):
        export(source, out, progress=False)
    assert not out.exists()
    assert not out.parent.exists() or not any(out.parent.iterdir())


@pytest.mark.parametrize("config", ["{not json", "[1, 2]"], ids=["bad-json", "json-list"])
def test_hf_folder_with_broken_config_is_unsupported(tmp_path: Path, config: str) -> None:
    """A folder whose config.json is not a JSON object raises UnsupportedModelError, not a crash."""
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text(config, encoding="utf-8")
    with pytest.raises(UnsupportedModelError, match=r"config\.json"):
        export(folder, tmp_path / "out", progress=False)


def test_hf_folder_with_broken_safetensors_is_unsupported(tmp_path: Path) -> None:
    """A safetensors file whose header is JSON but not an object raises UnsupportedModelError."""
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama"}', encoding="utf-8")
    header = b"[1, 2]"
    (folder / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(UnsupportedModelError, match=r"model\.safetensors"):
        export(folder, tmp_path / "out", progress=False)


# ---- damaged GGUF files -----------------------------------------------------------------------


def test_truncated_gguf_is_unsupported(smollm2_gguf: Path, tmp_path: Path) -> None:
    """The first megabyte of a real GGUF raises UnsupportedModelError naming the file."""
    truncated = tmp_path / "truncated.gguf"
    with open(smollm2_gguf, "rb") as fh:
        truncated.write_bytes(fh.read(1 << 20))
    out = tmp_path / "out"
    with pytest.raises(UnsupportedModelError, match=r"truncated\.gguf"):
        export(truncated, out, progress=False)
    assert not out.exists() and _staging_leftovers(tmp_path) == []


# ---- targets that must not be clobbered -------------------------------------------------------


def test_export_into_non_empty_dir_without_overwrite_is_refused(
    smollm2_gguf: Path, tmp_path: Path
) -> None:
    """Exporting into a non-empty folder without overwrite raises PackageError, touching nothing."""
    target = tmp_path / "mine"
    (target / "sub").mkdir(parents=True)
    (target / "thesis.txt").write_text("years of work\n", encoding="utf-8")
    (target / "sub" / "data.bin").write_bytes(os.urandom(1000))
    before = _snapshot(target)
    with pytest.raises(PackageError, match="overwrite"):
        export(smollm2_gguf, target, progress=False)
    assert _snapshot(target) == before
    assert _staging_leftovers(tmp_path) == []


def test_export_onto_a_file_without_overwrite_is_refused(
    smollm2_gguf: Path, tmp_path: Path
) -> None:
    """Exporting onto an existing plain file raises PackageError and leaves the file as it was."""
    target = tmp_path / "model"
    target.write_text("not a folder\n", encoding="utf-8")
    with pytest.raises(PackageError):
        export(smollm2_gguf, target, progress=False)
    assert target.read_text(encoding="utf-8") == "not a folder\n"


def _interrupt_at_block(monkeypatch: pytest.MonkeyPatch, index: int) -> list[int]:
    """Make the export raise KeyboardInterrupt (Ctrl-C) when it builds block `index`'s graph."""
    original = LlamaArchitecture.block_graph
    built: list[int] = []

    def block_graph(self, spec, i, *weights):
        if i == index:
            raise KeyboardInterrupt
        built.append(i)
        return original(self, spec, i, *weights)

    monkeypatch.setattr(LlamaArchitecture, "block_graph", block_graph)
    return built


@pytest.fixture(scope="module")
def tiny_llama_gguf(smollm2_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-block random Llama with SmolLM2's tokenizer: an export interrupted at its second
    block is as interrupted as one at a real model's sixth, in a fraction of the time."""
    pytest.importorskip("gguf")
    from tests.tiny_gguf import write_tiny_gguf

    folder = tmp_path_factory.mktemp("interrupted")
    return write_tiny_gguf(smollm2_package / "tokenizer.json", folder / "tiny.gguf")


def test_interrupted_overwrite_keeps_the_old_package(
    tiny_llama_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during an overwriting export leaves the old package loadable and fully verified."""
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))  # stamps stay private
    target = tmp_path / "models" / "tiny"
    export(tiny_llama_gguf, target, progress=False)
    listing = sorted(os.listdir(target))
    built = _interrupt_at_block(monkeypatch, 1)

    with pytest.raises(KeyboardInterrupt):
        export(tiny_llama_gguf, target, overwrite=True, progress=False)

    assert built == [0]  # it really was interrupted mid-way
    assert sorted(os.listdir(target)) == listing
    open_package(target, verify="full")
    assert _staging_leftovers(target.parent) == []


def test_interrupted_fresh_export_leaves_nothing(
    tiny_llama_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C during an export to a new folder leaves no folder and no half-written package."""
    target = tmp_path / "models" / "tiny"
    built = _interrupt_at_block(monkeypatch, 1)

    with pytest.raises(KeyboardInterrupt):
        export(tiny_llama_gguf, target, progress=False)

    assert built == [0]
    assert not target.exists()
    assert _staging_leftovers(target.parent) == []
