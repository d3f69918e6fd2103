"""The CLI as a newcomer meets it (issue 16): options between MODEL and PROMPT, `edge bench
--stream` without matplotlib, `edge eval ppl`'s default protocol, a GGUF export without
transformers' "PyTorch was not found" line, and `edge plan` on a model not exported yet.

The model is a tiny random Llama GGUF (`tests.tiny_gguf`), so each command takes a second or
less.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.cli.main import main, parse
from tests.tiny_gguf import write_tiny_gguf

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def tiny_gguf(smollm2_package: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("gguf")
    folder = tmp_path_factory.mktemp("tiny-gguf")
    return write_tiny_gguf(smollm2_package / "tokenizer.json", folder / "tiny.gguf")


@pytest.fixture(scope="module")
def tiny_pkg(tiny_gguf: Path) -> str:
    """The tiny GGUF as an edge package (float32, as the source)."""
    from exporters.export import export

    return str(export(tiny_gguf, tiny_gguf.parent / "tiny", progress=False))


Run = Callable[..., tuple[int, str, str]]


@pytest.fixture
def edge_main(capsys: pytest.CaptureFixture[str]) -> Run:
    """`run(*argv) -> (exit code, stdout, stderr)` of `edge` in this process."""

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def test_options_may_come_between_model_and_prompt(tiny_pkg: str, edge_main: Run) -> None:
    """`edge run PKG -n 4 "hi"` and `edge run PKG --memory-budget 300MB "hi"` once failed with
    "unrecognized arguments"; every order now parses alike, and runs alike."""
    orders = (
        ["run", tiny_pkg, "-n", "4", "hi"],
        ["run", tiny_pkg, "hi", "-n", "4"],
        ["run", "-n", "4", tiny_pkg, "hi"],
    )
    for argv in orders:
        args = parse(argv)
        assert (args.words, args.max_tokens) == ([tiny_pkg, "hi"], 4), argv
    args = parse(["run", tiny_pkg, "--memory-budget", "300MB", "-q", PROMPT])
    assert (args.words, args.memory_budget, args.quiet) == ([tiny_pkg, PROMPT], "300MB", True)
    between = edge_main("run", tiny_pkg, "-n", "4", "--stats", "-q", "-t", "1", PROMPT)
    after = edge_main("run", tiny_pkg, PROMPT, "-n", "4", "--stats", "-q", "-t", "1")
    assert between[0] == 0, between[2]
    assert "generated: 4 tokens" in between[2]
    assert between[1] == after[1] and between[1].strip()


def test_bench_stream_without_matplotlib_says_so_before_the_work(
    tiny_pkg: str, edge_main: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`edge bench --stream` once ran the whole benchmark, then exited 2 on the missing
    matplotlib: now a notice comes before the model loads, the run ends normally without the
    plot, and its budget is one size (never "800MB bytes")."""
    import edge
    import edge.cli.options
    from edge.errors import BudgetTooSmallError

    with pytest.raises(BudgetTooSmallError) as caught:  # the smallest budget it loads under
        edge.load(tiny_pkg, memory_budget=1, max_context=256, threads=1, progress=False)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` fails, as unset
    real_load = edge.cli.options.load_model

    def load_model(*args: Any, **kwargs: Any) -> Any:
        print("[the model loads]", file=sys.stderr)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(edge.cli.options, "load_model", load_model)
    plot = tmp_path / "timeline.png"
    code, out, err = edge_main(
        "bench", tiny_pkg, "--stream", "--memory-budget", str(caught.value.minimum),
        "--ctx", "256", "-p", "8", "-n", "4", "-r", "1", "-t", "1", "-q",
        "--timeline", str(plot),
    )  # fmt: skip
    assert code == 0, err
    notice = "matplotlib is missing: no timeline plot; pip install 'edge[plot]'"
    assert notice in err and "[the model loads]" in err
    assert err.index(notice) < err.index("[the model loads]")
    assert re.search(r"^model +\S+, memory budget [\d.]+ [KMG]iB$", out, re.MULTILINE), out
    assert "decode" in out and "timeline" not in out and not plot.exists()


def test_eval_ppl_prints_and_follows_readmes_protocol(tiny_pkg: str, edge_main: Run) -> None:
    """`edge eval ppl MODEL` once scored the whole corpus (40 minutes for a real model); by
    default it scores README's 2048 tokens in 512-token windows, and says so first."""
    code, out, err = edge_main("eval", "ppl", tiny_pkg, "-q", "-t", "1")
    assert code == 0, err
    assert (
        "protocol: 512-token windows every 512 tokens over the first 2048 tokens of "
        "pydoc_data.topics" in err
    )
    assert re.match(r"perplexity \d+\.\d+ over 2047 tokens \(window 512, stride 512\b", out), out


HIDE_TORCH = "import sys; sys.modules['torch'] = None  # a device without PyTorch\n"
PYTORCH_LINE = "PyTorch was not found"


def test_gguf_export_never_says_pytorch_was_not_found(tiny_gguf: Path, tmp_path: Path) -> None:
    """transformers, imported without torch, prints "PyTorch was not found. Models won't be
    available..." - true of transformers, misleading for edge, whose exports need no torch
    (exporters/sources sets TRANSFORMERS_NO_ADVISORY_WARNINGS). Both commands run in child
    processes with torch hidden, the first showing the line this test would catch."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("TRANSFORMERS_VERBOSITY", "TRANSFORMERS_NO_ADVISORY_WARNINGS")
    }
    out = tmp_path / "pkg"
    export = HIDE_TORCH + "from edge.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    commands = (
        [sys.executable, "-c", HIDE_TORCH + "import transformers"],
        [sys.executable, "-c", export, "export", str(tiny_gguf), "-o", str(out)],
    )
    children = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for c in commands
    ]
    (_, plain_err), (export_out, export_err) = (c.communicate(timeout=120) for c in children)
    assert PYTORCH_LINE in plain_err
    assert children[1].returncode == 0, export_err
    assert export_out.strip() == str(out) and (out / "manifest.json").is_file()
    assert PYTORCH_LINE not in export_err, export_err


def test_plan_lays_a_model_out_instead_of_exporting_it(
    tiny_gguf: Path, edge_main: Run, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`edge plan MODEL` once exported the model before planning (16 minutes for the 1.5B
    with AWQ). Now it plans on the layout the export would write: nothing lands in the cache,
    the plan says so, and it is the plan of the exported package."""
    from exporters.defaults import default_export_config
    from exporters.export import export

    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))
    code, out, err = edge_main("plan", str(tiny_gguf), "--profile", "rpi5", "--json", "-q")
    assert code == 0, err
    planned = json.loads(out)
    assert "not exported yet" in planned["notes"].pop()
    assert not any((tmp_path / "cache").rglob("manifest.json"))
    package = export(tiny_gguf, tmp_path / "pkg", default_export_config(tiny_gguf), progress=False)
    code, out, err = edge_main("plan", str(package), "--profile", "rpi5", "--json")
    assert code == 0, err
    assert planned == json.loads(out)
