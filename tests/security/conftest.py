"""Fixtures for the hostile-package tests: private copies of the real SmolLM2 package to damage.

Every test works on a copy of the shared fp32 package made of hard links (cheap: ~520 MB); a
file a test changes is first unlinked and rewritten (never modified in place), so the shared
fixture stays intact. Manifests are edited as JSON and their `files[]` entries re-hashed, so the
one thing wrong with a hostile package is the thing a test is about: otherwise the size or
sha256 check would refuse it first and the test would prove nothing.

Helpers are handed to test files as the `hostile` fixture (test folders are not packages, so a
conftest cannot be imported).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MANIFEST = "manifest.json"
PROMPT = "Hi"
TOKENS = 4
# What a hostile graph tries to read: if these bytes ever reach stdout, the package leaked them.
CANARY = b"EDGE-SECURITY-CANARY-7f3a9c: the user's private data\n"


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Verification stamps go to a private cache: a test's stamp must not vouch for (or against)
    # another test's package, and the user's cache stays untouched.
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def package(smollm2_package: Path, tmp_path: Path) -> Path:
    """A private hard-linked copy of the real SmolLM2 package, free to damage (see `hostile`)."""
    return linked_copy(smollm2_package, tmp_path / "pkg")


def linked_copy(package: Path, dest: Path) -> Path:
    """A copy of `package` whose files are hard links: never modify one in place."""
    shutil.copytree(package, dest, copy_function=os.link, symlinks=True)
    return dest


def own(path: Path) -> Path:
    """Replace a hard link by a private copy, so it can be modified without touching the fixture."""
    private = path.with_name(path.name + ".private")
    shutil.copyfile(path, private)
    os.replace(private, path)
    return path


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` as a new file at `path` (unlinked first: a hard-linked original survives)."""
    path.unlink(missing_ok=True)
    path.write_bytes(data)
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(root: Path) -> dict[str, Any]:
    return json.loads((root / MANIFEST).read_text(encoding="utf-8"))


def write_manifest(root: Path, data: dict[str, Any]) -> None:
    write_bytes(root / MANIFEST, (json.dumps(data, indent=1) + "\n").encode())


def file_entry(data: dict[str, Any], name: str) -> dict[str, Any]:
    """The `files[]` entry of `name` (KeyError if it is not listed)."""
    for entry in data["files"]:
        if entry["path"] == name:
            return entry
    raise KeyError(name)


def list_file(data: dict[str, Any], name: str, path: Path, *, replace: str | None = None) -> None:
    """Make `files[]` describe `name` with `path`'s real size and sha256 (hashes consistent).

    `replace`: the listed name whose entry becomes `name`'s (a moved file); else `name`'s own
    entry is updated, or a new one added.
    """
    entry = {"path": name, "size": path.stat().st_size, "sha256": sha256(path)}
    old = replace or name
    for i, existing in enumerate(data["files"]):
        if existing["path"] == old:
            data["files"][i] = entry
            return
    data["files"].append(entry)


def part(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in data["parts"] if p["name"] == name)


def add_external_initializer(
    graph: bytes, location: str, *, name: str = "stolen", nbytes: int = 4, output: str | None = None
) -> bytes:
    """`graph` with one more float32 initializer whose bytes live in `location` (ONNX external
    data), added to the graph's output (`output`, or its first) so a runtime must read it.

    The model stays valid: the output is renamed inside the graph and re-made as
    `Add(original, initializer)`, which broadcasts a 1-element or hidden-sized vector.
    """
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_model_from_string(graph)
    out = output or model.graph.output[0].name
    raw = f"{out}.before_{name}"
    producer = next(n for n in model.graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = raw
    tensor = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=[nbytes // 4])
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    model.graph.initializer.append(tensor)
    model.graph.node.append(helper.make_node("Add", [raw, name], [out], name=f"add_{name}"))
    return model.SerializeToString()


@dataclass
class CliResult:
    rc: int
    out: str
    err: str


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """`edge run PKG "Hi" -n 4 -q` through `edge.cli.main.main`, with its exit code and output."""
    from edge.cli.main import main

    def run(pkg: Path | str, *extra: str) -> CliResult:
        capsys.readouterr()
        rc = main(["run", str(pkg), PROMPT, "-n", str(TOKENS), "-q", *extra])
        captured = capsys.readouterr()
        return CliResult(rc, captured.out, captured.err)

    return run


class Hostile:
    """The helpers above as one object: `def test_x(hostile): hostile.own(path)`."""

    MANIFEST = MANIFEST
    PROMPT = PROMPT
    TOKENS = TOKENS
    CANARY = CANARY
    linked_copy = staticmethod(linked_copy)
    own = staticmethod(own)
    write_bytes = staticmethod(write_bytes)
    sha256 = staticmethod(sha256)
    read_manifest = staticmethod(read_manifest)
    write_manifest = staticmethod(write_manifest)
    file_entry = staticmethod(file_entry)
    list_file = staticmethod(list_file)
    part = staticmethod(part)
    add_external_initializer = staticmethod(add_external_initializer)


@pytest.fixture(scope="session")
def hostile() -> type[Hostile]:
    """The helpers of this folder (see `Hostile`)."""
    return Hostile


@pytest.fixture
def ort_spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every model handed to `onnxruntime.InferenceSession` while the test runs (as bytes), so
    a test can check a hostile graph was refused before ONNX Runtime ever saw it."""
    import onnxruntime

    seen: list[bytes] = []
    real = onnxruntime.InferenceSession

    def spy(model: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(model if isinstance(model, bytes) else Path(model).read_bytes())
        return real(model, *args, **kwargs)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    yield seen
