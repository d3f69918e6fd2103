"""Mistakes on the command line and in its input end with one "error:" line and exit 2, never a
traceback, and are caught before a model is loaded where they can be; `edge chat` keeps going
when its context fills, dropping the oldest turns."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli.main import main
from edge.step_inputs import usable_threads


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def _usage_error(result: tuple[int, str, str], *needles: str) -> None:
    rc, out, err = result
    assert rc == 2, err
    assert out == ""
    assert "error:" in err and "Traceback" not in err
    for needle in needles:
        assert needle in err


# ---- before any model is loaded ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--seed", "-1"], "--seed"),
        (["--seed", "x"], "--seed"),
        (["-n", "0"], "--max-tokens"),
        (["--top-k", "-3"], "--top-k"),
        (["--threads", "0"], "--threads"),
        (["--ctx", "-5"], "--ctx"),
        (["--draft-tokens", "-1"], "--draft-tokens"),
        (["--temperature", "nan"], "temperature"),
        (["--top-p", "0"], "top_p"),
        (["--stop", ""], "stop"),
    ],
)
def test_bad_values_fail_before_loading(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    """The model does not exist: the error is about the value, so it came first."""
    _usage_error(_run(capsys, "run", "/nonexistent-model", "x", *args), needle)


def test_more_threads_than_cores_names_the_maximum(capsys: pytest.CaptureFixture[str]) -> None:
    most = usable_threads()
    _usage_error(
        _run(capsys, "run", "/nonexistent-model", "x", "-t", str(most + 1000)), f"at most {most}"
    )
    _usage_error(
        _run(
            capsys,
            "run",
            "/nonexistent-model",
            "x",
            "--draft",
            "lookup",
            "--draft-threads",
            str(most + 1),
        ),
        "draft threads",
    )


def test_bench_sizes_are_checked(capsys: pytest.CaptureFixture[str]) -> None:
    _usage_error(_run(capsys, "bench", "/nonexistent-model", "-r", "-1"), "--runs")


def test_invalid_utf8_in_the_prompt_argument(capsys: pytest.CaptureFixture[str]) -> None:
    """Invalid UTF-8 in argv reaches Python as lone surrogates (surrogateescape)."""
    _usage_error(_run(capsys, "run", "/nonexistent-model", "bad \udcff byte"), "UTF-8")


def test_invalid_utf8_on_stdin_is_a_usage_error(smollm2_package: Path) -> None:
    """`edge run -` with bytes that are not UTF-8: a real process, since stdin's decoding (strict
    or surrogateescape, by locale) is what is tested."""
    script = Path(sys.executable).with_name("edge")
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "edge.cli.main"]
    for env in ({"PYTHONIOENCODING": "utf-8"}, {"PYTHONIOENCODING": "utf-8:surrogateescape"}):
        done = subprocess.run(
            [*command, "run", str(smollm2_package), "-", "-q"],
            input=b"The capital \xff\xfe of France",
            capture_output=True,
            timeout=120,
            env={**os.environ, **env},
            check=False,
        )
        err = done.stderr.decode(errors="replace")
        assert done.returncode == 2, err
        assert "error:" in err and "Traceback" not in err
        assert done.stdout == b""


def test_control_characters_in_errors_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    """An error quoting an input must not pass terminal escape sequences through."""
    rc, _, err = _run(capsys, "run", "/nonexistent-\x1b]0;pwned\x07", "x", "-q")
    assert rc == 2
    assert "\x1b" not in err and "\x07" not in err
    assert "\\x1b" in err


# ---- with the real model ----------------------------------------------------------------------


def _package_with_template(smollm2_package: Path, dest: Path, template: str) -> Path:
    """A hard-linked copy of the fixture whose manifest carries `template` (the manifest is
    unlinked before it is written, so the shared fixture is untouched)."""
    shutil.copytree(smollm2_package, dest, copy_function=os.link)
    manifest = dest / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["tokenizer"]["chat_template"] = template
    manifest.unlink()
    manifest.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return dest


def test_broken_chat_template_fails_chat_only(
    smollm2_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    original = (smollm2_package / "manifest.json").read_bytes()
    package = _package_with_template(
        smollm2_package, tmp_path / "pkg", "{% for m in messages %}{{ m.content }"
    )
    rc, out, err = _run(capsys, "run", str(package), "The capital of France is", "-n", "2", "-q")
    assert rc == 0, err
    assert out.strip()
    _usage_error(
        _run(capsys, "run", str(package), "Hi", "--chat", "-n", "2", "-q"), "chat template"
    )
    assert (smollm2_package / "manifest.json").read_bytes() == original


def test_chat_drops_the_oldest_turns_when_the_context_fills(
    smollm2_package: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small context: the conversation goes on, earlier turns are dropped (said on stderr),
    a message too long on its own is not sent, and the session still ends normally."""
    lines = [f"Tell me fact number {i} about the sea, briefly." for i in range(9)]
    lines.insert(3, "word " * 300)  # longer than the whole context
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join([*lines, "/exit"]) + "\n"))
    rc, out, err = _run(
        capsys,
        "chat",
        str(smollm2_package),
        "--ctx",
        "160",
        "-n",
        "12",
        "--system",
        "Be brief.",
        "-q",
        "-t",
        "1",
    )
    assert rc == 0, err
    assert "Traceback" not in err
    assert "dropped" in err and "the system message is kept" in err
    assert "not sent" in err
    assert len([line for line in out.splitlines() if line.strip()]) == 9  # every reply came
