"""One engine class: resident and streamed runs are both `Engine`s (the streamed one places its
parts on the `streamed` backend), picked in one place by their configuration, `Runner`s that
answer the same questions (where they run, how many CPU threads, whether speculation is
exact, what to report)."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.engine import Engine, EngineConfig
from edge.package import open_package
from edge.runner import Runner, create_runner
from edge.streaming import StreamConfig, streamed_state


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))


def test_both_engines_are_runners_with_the_same_answers(smollm2_package: Path) -> None:
    package = open_package(smollm2_package, verify="sizes")
    resident = create_runner(package, EngineConfig(max_context=64, threads=1))
    streamed = create_runner(
        package, StreamConfig("2GB", max_context=64, threads=1), progress=False
    )
    assert isinstance(resident, Engine) and isinstance(streamed, Engine)
    assert streamed_state(resident) is None and streamed_state(streamed) is not None
    for runner in (resident, streamed):
        assert isinstance(runner, Runner)
        assert runner.cpu_threads() == 1 and runner.rounds_by_step() is False
        assert runner.report() is None  # nothing decoded yet
        logits = runner.prefill([1, 2, 3])
        assert logits.shape == (1, package.spec.vocab_size) and runner.position == 3
        runner.decode(int(logits[0].argmax()))
    assert "ort_cpu" in resident.describe()
    assert "[0, 32) embed..head: streamed" in streamed.describe()
    assert "memory budget 1.86 GiB: " in streamed.describe()
    for runner in (resident, streamed):
        runner.close()
