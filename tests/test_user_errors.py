"""SDK mistakes and hostile inputs outside the package files get typed errors, and edge's own
machinery (a subprocess probe, the cache) cannot be turned against it by the working directory
or a broken cache: token ids outside the vocabulary, bad sampling values, too many threads,
a `json.py` in the working directory, a read-only cache, a deeply nested calibration file."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import edge
from edge import Model
from edge.errors import CacheDirError, ConfigError, InvalidSamplingError, InvalidTokenError
from edge.step_inputs import usable_threads


@pytest.fixture(scope="module")
def model(smollm2_package: Path) -> Model:
    return edge.load(str(smollm2_package), progress=False, threads=1)


# ---- token ids --------------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [[1, -1], [49152], [1, 2**40], [1, 2.0], ["a"], b"hello", 7])
def test_bad_token_ids_are_typed_errors(model: Model, prompt: object) -> None:
    """Ids outside [0, vocab), non-integers and non-sequences are refused before the engine
    indexes anything (int() would take 2.0, and bytes would pass as ids)."""
    assert model.spec.vocab_size == 49152
    with pytest.raises(InvalidTokenError):
        model.generate(prompt, max_tokens=1)  # type: ignore[arg-type]
    assert model.generate([1, 2, 3], max_tokens=2)  # the model still works


def test_numpy_token_ids_are_accepted(model: Model) -> None:
    ids = np.array([504, 3575, 282], dtype=np.int32)
    assert model.generate(ids, max_tokens=2) == model.generate([504, 3575, 282], max_tokens=2)


def test_engine_checks_ids_too(model: Model) -> None:
    """The lower-level Engine API checks its ids as well, without breaking the engine."""
    engine = model.engine
    engine.reset()
    with pytest.raises(InvalidTokenError, match="49152"):
        engine.prefill([1, 49152])
    with pytest.raises(InvalidTokenError):
        engine.prefill(np.array([0.5, 1.0]))
    assert engine.position == 0
    engine.prefill([1, 2])
    with pytest.raises(InvalidTokenError):
        engine.decode(-1)
    with pytest.raises(InvalidTokenError):
        engine.verify([3, -5])
    assert engine.position == 2
    engine.decode(3)
    engine.reset()


# ---- sampling and threads ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{"seed": -1}, {"top_k": 1.5}, {"temperature": "0.7"}, {"max_tokens": 0}, {"stop": [1]}],
)
def test_bad_generation_values_are_typed_errors(model: Model, kwargs: dict) -> None:
    with pytest.raises(InvalidSamplingError):
        model.generate("Hi", **{"max_tokens": 2, **kwargs})


def test_more_threads_than_cores_is_refused_with_the_maximum(smollm2_package: Path) -> None:
    most = usable_threads()
    with pytest.raises(ConfigError, match=f"at most {most}"):
        edge.load(str(smollm2_package), progress=False, threads=most + 1)


# ---- the footprint probe's subprocess ---------------------------------------------------------


def test_footprint_probe_ignores_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`python -c` puts the working directory first on sys.path: the probe runs isolated (-I)
    from a scratch folder, so a json.py or numpy.py there never runs; it still measures."""
    from edge.planner import machine, memory

    marker = tmp_path / "ran"
    for name in ("json", "numpy", "edge"):
        (tmp_path / f"{name}.py").write_text(f"open({str(marker)!r}, 'a').write('{name}')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # ignored by -I as well
    machine.import_footprint.cache_clear()
    try:
        footprint = machine.import_footprint()
    finally:
        machine.import_footprint.cache_clear()
    assert not marker.exists(), marker.read_text()
    assert footprint != memory.DEFAULT_FOOTPRINT  # measured, not the constants it falls back to


# ---- the cache --------------------------------------------------------------------------------


def _unwritable_cache(tmp_path: Path) -> Path:
    """A cache path no one can create, root included: chmod does not stop root, a path under a
    regular file does (NotADirectoryError)."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    return blocker / "cache"


def test_unwritable_cache_degrades_for_records_and_fails_clearly_for_downloads(
    smollm2_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stamps and speculative calibration only warn; what must be stored raises
    CacheDirError naming the folder and EDGE_CACHE_DIR."""
    from edge.paths import cache_dir, models_dir

    cache = _unwritable_cache(tmp_path)
    monkeypatch.setenv("EDGE_CACHE_DIR", str(cache))
    assert cache_dir() == cache  # no error: nothing needed writing yet
    with pytest.raises(CacheDirError, match="EDGE_CACHE_DIR") as info:
        models_dir()
    assert str(cache) in str(info.value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the failed writes warn
        m = edge.load(str(smollm2_package), progress=False, draft="lookup", threads=1)
        assert m.generate("Count: one, two,", max_tokens=4, ignore_eos=True)
    assert not cache.exists()


def test_save_calibration_warns_instead_of_failing(tmp_path: Path) -> None:
    from edge.speculative.calibration import Calibration, save_calibration

    with pytest.warns(RuntimeWarning, match="could not write"):
        save_calibration(_unwritable_cache(tmp_path) / "c.json", Calibration(plain_step=0.01))


@pytest.mark.parametrize("text", ["[" * 200_000, '{"a": ' * 200_000, " " * (2 << 20)])
def test_hostile_calibration_files_are_ignored(
    tmp_path: Path, text: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nesting deep enough to exhaust json's recursion, or a file far larger than any
    calibration, reads as no calibration (with a warning), never a traceback."""
    from edge.speculative.calibration import load_calibration

    path = tmp_path / "c.json"
    path.write_text(text)
    with caplog.at_level("WARNING", logger="edge.speculative"):
        assert load_calibration(path) is None
    assert "ignoring unreadable speculative calibration" in caplog.text
