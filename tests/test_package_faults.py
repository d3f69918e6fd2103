"""Damaged or foreign packages fail with a typed error that names the problem, and lose nothing.

Every test works on a copy of the shared SmolLM2 package made of hard links (cheap: the package
is ~520 MB); a file a test damages is first replaced by a private copy (`_own`), because changing
a hard-linked file in place would change the shared fixture too. The last test checks it did not.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from edge import format as fmt
from edge import stamps as stamps_module
from edge.errors import FormatVersionError, IntegrityError, PackageError
from edge.graph_merge import merge_models
from edge.package import open_package

WEIGHT = "block.005.bin"
GRAPH = "block.3.onnx"


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Verification stamps go to a private cache, not the user's. Session fixtures (the pulled
    # GGUF and the exported package) are set up before this, so they still use the real cache.
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))


def _linked_copy(package: Path, dest: Path) -> Path:
    """A copy of `package` whose files are hard links: never modify one in place."""
    shutil.copytree(package, dest, copy_function=os.link)
    return dest


def _own(path: Path) -> Path:
    """Replace a hard link by a private copy, so it can be modified without touching the fixture."""
    private = path.with_name(path.name + ".private")
    shutil.copyfile(path, private)
    os.replace(private, path)
    return path


def _flip_byte(path: Path) -> None:
    """Invert one byte in the middle of a (private) file; its size stays the same."""
    with open(path, "r+b") as fh:
        fh.seek(path.stat().st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))


def _write_manifest_text(root: Path, text: str | bytes) -> Path:
    """Write a new manifest.json, unlinking first so a hard-linked original stays intact."""
    path = root / fmt.MANIFEST_FILE
    path.unlink(missing_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def package(smollm2_package: Path, tmp_path: Path) -> Path:
    return _linked_copy(smollm2_package, tmp_path / "pkg")


# ---- weight files ---------------------------------------------------------------------------


@pytest.mark.parametrize("verify", ["sizes", "auto", "full"])
def test_truncated_weight_file_raises_integrity_error(package: Path, verify: str) -> None:
    """A truncated weight file is caught by every verify mode, even the cheap "sizes" one."""
    weight = _own(package / WEIGHT)
    size = weight.stat().st_size
    os.truncate(weight, size - 4096)
    with pytest.raises(IntegrityError, match=r"block\.005\.bin") as info:
        open_package(package, verify=verify)
    assert str(size) in str(info.value) and str(size - 4096) in str(info.value)
    assert weight.stat().st_size == size - 4096  # reported, not deleted or "repaired"


def test_flipped_byte_raises_integrity_error_with_full_verify(package: Path) -> None:
    """One flipped byte (same size) is caught by verify="full", naming the file and sha256."""
    _flip_byte(_own(package / WEIGHT))
    with pytest.raises(IntegrityError, match=r"block\.005\.bin") as info:
        open_package(package, verify="full")
    assert "sha256" in str(info.value)


def test_flipped_byte_after_verified_load_is_still_caught_by_auto(
    package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "verified" stamp of an earlier auto load never hides a file modified since."""
    # The private copy is seconds old; remember its hash anyway (see edge.stamps.RACY_NS).
    monkeypatch.setattr(stamps_module, "RACY_NS", 0)
    weight = _own(package / WEIGHT)
    open_package(package, verify="auto")  # hashes everything and writes the stamp
    stamps = list(Path(os.environ["EDGE_CACHE_DIR"], "verified").glob("*.json"))
    assert len(stamps) == 1
    before = weight.stat().st_mtime_ns
    _flip_byte(weight)
    assert weight.stat().st_mtime_ns != before, "test premise: the flip changes mtime"
    with pytest.raises(IntegrityError, match=r"block\.005\.bin") as info:
        open_package(package, verify="auto")
    assert "sha256" in str(info.value)
    # and it keeps failing: a failed check must not record the damaged file as verified
    with pytest.raises(IntegrityError):
        open_package(package, verify="auto")


def test_unmodified_package_loads_again_with_auto(package: Path) -> None:
    """A second auto load of an untouched package succeeds (the stamp is only a shortcut)."""
    first = open_package(package, verify="auto")
    second = open_package(package, verify="auto")
    assert second.manifest == first.manifest


# ---- missing files --------------------------------------------------------------------------


def test_missing_graph_file_raises_package_error(package: Path) -> None:
    """A package missing one of its .onnx graphs is refused with an error naming it."""
    (package / GRAPH).unlink()
    with pytest.raises(PackageError, match=r"block\.3\.onnx"):
        open_package(package, verify="sizes")


def test_missing_weight_file_raises_package_error(package: Path) -> None:
    """A package missing one of its weight files is refused with an error naming it."""
    (package / WEIGHT).unlink()
    with pytest.raises(PackageError, match=r"block\.005\.bin"):
        open_package(package, verify="sizes")


def test_graph_deleted_after_open_is_still_the_verified_one(package: Path) -> None:
    """Files are opened once per load: a graph deleted (or replaced) at its path after the
    package was opened is still read from the file that was verified."""
    opened = open_package(package, verify="sizes")
    expected = (package / GRAPH).read_bytes()
    (package / GRAPH).unlink()
    (package / GRAPH).write_bytes(b"not a graph")
    assert opened.graph_bytes(opened.manifest.part("block.3")) == expected


# ---- manifests ------------------------------------------------------------------------------


def test_newer_format_version_asks_to_upgrade(package: Path) -> None:
    """A manifest from a newer edge raises FormatVersionError saying to upgrade edge."""
    data = json.loads((package / fmt.MANIFEST_FILE).read_text(encoding="utf-8"))
    data["format_version"] = fmt.FORMAT_VERSION + 1
    _write_manifest_text(package, json.dumps(data))
    with pytest.raises(FormatVersionError, match="upgrade") as info:
        open_package(package, verify="sizes")
    assert str(fmt.FORMAT_VERSION + 1) in str(info.value)
    assert isinstance(info.value, PackageError)


def test_directory_without_manifest_is_not_a_package(tmp_path: Path) -> None:
    """A directory with no manifest.json raises PackageError naming the missing manifest."""
    (tmp_path / "model.onnx").write_bytes(b"\0" * 16)
    with pytest.raises(PackageError, match=r"manifest\.json"):
        open_package(tmp_path)


def test_plain_file_is_not_a_package(package: Path) -> None:
    """Passing a file (even the manifest itself) instead of the package folder is a PackageError."""
    with pytest.raises(PackageError, match="not a directory"):
        open_package(package / fmt.MANIFEST_FILE)


def test_missing_path_is_not_a_package(tmp_path: Path) -> None:
    """A path that does not exist raises PackageError, not FileNotFoundError."""
    with pytest.raises(PackageError):
        open_package(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "text",
    [
        '{"model_type": "llama", "hidden_size": 576}',  # a Hugging Face config.json
        '{"format": "onnx", "format_version": 1}',
        "[1, 2, 3]",
        '"edge-package"',
        "null",
    ],
    ids=["hf-config", "other-format", "list", "string", "null"],
)
def test_json_of_something_else_is_not_a_package(tmp_path: Path, text: str) -> None:
    """A manifest.json that is JSON but not an edge manifest is refused as such."""
    _write_manifest_text(tmp_path, text)
    with pytest.raises(PackageError, match="not an edge package manifest"):
        open_package(tmp_path)


@pytest.mark.parametrize(
    "text",
    ["", "{", '{"format": "edge-package",', "not json at all"],
    ids=["empty", "brace", "cut", "prose"],
)
def test_malformed_json_manifest_is_package_error(tmp_path: Path, text: str) -> None:
    """A manifest.json that is not valid JSON raises PackageError saying so."""
    _write_manifest_text(tmp_path, text)
    with pytest.raises(PackageError, match="not valid JSON"):
        open_package(tmp_path)


def test_binary_garbage_manifest_is_package_error(tmp_path: Path) -> None:
    """A manifest.json of binary garbage (not UTF-8) raises PackageError, not UnicodeDecodeError."""
    _write_manifest_text(tmp_path, b"\xff\xfe\x00\x9c garbage \x80\x81")
    with pytest.raises(PackageError):
        open_package(tmp_path)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.pop("parts"),
        lambda d: d["spec"].pop("hidden_size"),
        lambda d: d.__setitem__("files", None),
        lambda d: d["parts"][0]["tensors"][0].__setitem__("shape", 5),
        lambda d: d["parts"][0]["tensors"][0].__setitem__("dtype", "float7"),
        lambda d: d["spec"].__setitem__("vocab_size", "many"),
        lambda d: d["spec"].__setitem__("num_kv_heads", 0),
        lambda d: d["spec"].__setitem__("surprise", 1),
        lambda d: d.__setitem__("format_version", "1"),
    ],
    ids=[
        "no-parts",
        "no-hidden-size",
        "files-null",
        "shape-int",
        "bad-dtype",
        "vocab-str",
        "kv-heads-0",
        "unknown-field",
        "version-str",
    ],
)
def test_edge_manifest_with_bad_fields_is_package_error(package: Path, edit) -> None:
    """An edge manifest with a missing or wrong field raises PackageError, never a raw crash."""
    data = json.loads((package / fmt.MANIFEST_FILE).read_text(encoding="utf-8"))
    edit(data)
    _write_manifest_text(package, json.dumps(data))
    with pytest.raises(PackageError):
        open_package(package, verify="sizes")


# ---- graph merging --------------------------------------------------------------------------


def test_merge_models_on_truncated_graph_is_package_error(smollm2_package: Path) -> None:
    """Merging a truncated ONNX graph raises PackageError naming truncation, not a crash."""
    embed = (smollm2_package / "embed.onnx").read_bytes()
    block = (smollm2_package / "block.0.onnx").read_bytes()
    with pytest.raises(PackageError, match="truncated"):
        merge_models([embed, block[: len(block) // 2]])
    with pytest.raises(PackageError):
        merge_models([embed[:-7], block])
    with pytest.raises(PackageError):
        merge_models([b"", block])


def test_merge_models_never_crashes_on_any_truncation(smollm2_package: Path) -> None:
    """Whatever the cut, merging a truncated graph either fails with PackageError or not at all."""
    embed = (smollm2_package / "embed.onnx").read_bytes()
    block = (smollm2_package / "block.0.onnx").read_bytes()
    refused = 0
    for cut in range(len(block)):
        try:
            merge_models([embed, block[:cut]])
        except PackageError:
            refused += 1
    # a cut exactly at a protobuf field boundary is well-formed and cannot be detected here
    assert refused >= len(block) - 4


def test_merge_models_on_corrupted_names_is_package_error(smollm2_package: Path) -> None:
    """Merging a graph with a corrupted (non-UTF-8) tensor name raises PackageError."""
    embed = (smollm2_package / "embed.onnx").read_bytes()
    block = bytearray((smollm2_package / "block.0.onnx").read_bytes())
    at = block.rindex(b"past_key.0")  # graph inputs follow the nodes: the input's own name
    block[at] = 0xFF  # same length: the protobuf framing stays valid, the name is not UTF-8
    with pytest.raises(PackageError):
        merge_models([embed, bytes(block)])


# ---- nothing lost ---------------------------------------------------------------------------


def test_shared_package_is_untouched(smollm2_package: Path) -> None:
    """The faults above were injected into private copies: the original still fully verifies."""
    open_package(smollm2_package, verify="full")
