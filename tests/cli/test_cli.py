"""The `edge` command line, run as a real subprocess of the installed console script: generated
text alone on stdout, progress and stats on stderr, user errors as one "error:" line and exit 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import edge
from edge.cli.main import COMMANDS

TIMEOUT = 180  # each run starts Python, ONNX Runtime and the model: seconds normally
PROMPT = "The capital of France is"


def _edge_command() -> list[str]:
    script = Path(sys.executable).with_name("edge")
    if script.is_file():
        return [str(script)]
    found = shutil.which("edge")
    return [found] if found else [sys.executable, "-m", "edge.cli.main"]


EDGE = _edge_command()


def edge_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
        check=False,
    )


@pytest.fixture(scope="module")
def package(smollm2_package: Path) -> str:
    return str(smollm2_package)


@pytest.fixture(scope="module")
def expected_text(package: str) -> str:
    """What the SDK generates greedily for PROMPT in 8 tokens."""
    return edge.load(package, progress=False).generate(PROMPT, max_tokens=8)


def test_help_lists_every_subcommand() -> None:
    """`edge --help` names every subcommand."""
    result = edge_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in COMMANDS:
        assert name in result.stdout
    assert set(COMMANDS) >= {"pull", "export", "run", "chat", "info", "bench"}


def test_version() -> None:
    """`edge --version` prints the package version."""
    result = edge_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"edge {edge.__version__}"


def test_run_prints_only_the_generated_text(package: str, expected_text: str) -> None:
    """`edge run PKG PROMPT` prints exactly the SDK's generated text on stdout, nothing on stderr
    with -q."""
    result = edge_cli("run", package, PROMPT, "-n", "8", "-q")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text + "\n"
    assert result.stderr == ""


def test_chat_replies_get_a_mild_repetition_penalty(package: str) -> None:
    """`edge run --chat` penalises the last 64 tokens by 1.1 unless told otherwise (greedy
    replies of a 135M model loop); `--repeat-penalty 1` gives the plain greedy reply, and a
    prompt without --chat stays plain greedy (above)."""
    ask = "Write a haiku about the sea."
    model = edge.load(package, progress=False)
    turn = [{"role": "user", "content": ask}]
    penalised = model.chat(turn, max_tokens=32, repetition_penalty=1.1)
    greedy = model.chat(turn, max_tokens=32)
    assert penalised != greedy
    spared = set(model.tokenizer.whitespace_ids())  # what the penalty leaves alone
    assert set(model.tokenizer.encode("\n\n    ", add_special_tokens=False)) <= spared
    assert not set(model.tokenizer.encode(" sea", add_special_tokens=False)) & spared
    for extra, expected in (((), penalised), (("--repeat-penalty", "1"), greedy)):
        result = edge_cli("run", package, ask, "--chat", "-n", "32", "-q", *extra)
        assert result.returncode == 0, result.stderr
        assert result.stdout == expected + "\n", extra


def test_run_stats_go_to_stderr(package: str, expected_text: str) -> None:
    """`--stats` prints token counts and tok/s on stderr, leaving stdout the text alone."""
    result = edge_cli("run", package, PROMPT, "-n", "8", "-q", "--stats")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text + "\n"
    assert "tok/s" in result.stderr
    assert "generated: 8 tokens" in result.stderr
    assert "finish: length" in result.stderr
    assert "tok/s" not in result.stdout


def test_run_reads_the_prompt_from_stdin(package: str, expected_text: str) -> None:
    """`edge run PKG -` reads the prompt from stdin."""
    result = edge_cli("run", package, "-", "-n", "8", "-q", stdin=PROMPT)
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected_text + "\n"


def test_info_describes_the_package(package: str) -> None:
    """`edge info PKG` shows the architecture and its layer count."""
    result = edge_cli("info", package)
    assert result.returncode == 0, result.stderr
    assert "llama" in result.stdout
    assert "30 layers" in result.stdout


def test_info_json_is_the_manifest(package: str) -> None:
    """`edge info PKG --json` prints the manifest as parseable JSON."""
    result = edge_cli("info", package, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["spec"]["num_layers"] == 30
    assert data["spec"]["architecture"] == "llama"
    assert len(data["parts"]) == 32


def test_missing_model_is_a_clear_error() -> None:
    """A model that is neither a name nor a path exits 2 with one "error:" line naming it."""
    result = edge_cli("run", "/nonexistent", "x", "-q")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "error:" in result.stderr
    assert "/nonexistent" in result.stderr
    assert "smollm2-135m" in result.stderr  # the known names, so the user can pick one
    assert "Traceback" not in result.stderr


def test_invalid_temperature_is_a_clear_error(package: str) -> None:
    """A negative temperature exits 2 with an error naming temperature."""
    result = edge_cli("run", package, "x", "--temperature", "-1", "-q")
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert "temperature" in result.stderr
    assert "Traceback" not in result.stderr


def test_chat_replies_and_exits(package: str) -> None:
    """`edge chat PKG` with piped input replies to each line and exits 0 on /exit."""
    result = edge_cli("chat", package, "-n", "16", "-q", stdin="Hi\n/exit\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "Traceback" not in result.stderr


def test_chat_ends_at_end_of_input(package: str) -> None:
    """`edge chat PKG` exits 0 when its input ends (Ctrl-D)."""
    result = edge_cli("chat", package, "-q", stdin="")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""


def test_bench_prints_prefill_and_decode_speeds(package: str) -> None:
    """`edge bench PKG` prints prefill and decode tokens/s."""
    result = edge_cli("bench", package, "-p", "16", "-n", "8", "-r", "1", "-q")
    assert result.returncode == 0, result.stderr
    assert "prefill" in result.stdout
    assert "decode" in result.stdout
    assert "tok/s" in result.stdout


def test_export_of_a_text_file_is_a_clear_error(tmp_path: Path) -> None:
    """`edge export` of a file that is not a model exits 2 and creates nothing."""
    source = tmp_path / "notes.txt"
    source.write_text("not a model\n")
    out = tmp_path / "out"
    result = edge_cli("export", str(source), "-o", str(out), "-q")
    assert result.returncode == 2
    assert "error:" in result.stderr
    assert "notes.txt" in result.stderr
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_export_refuses_to_overwrite_without_force(tmp_path: Path, smollm2_gguf: Path) -> None:
    """`edge export SRC -o DIR` into a non-empty DIR exits 2 and leaves DIR alone."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = edge_cli("export", str(smollm2_gguf), "-o", str(out), "-q")
    assert result.returncode == 2
    assert "--force" in result.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_invalid_context_size_is_a_clear_error(package: str) -> None:
    """`--ctx 0` exits 2 with an error naming max_context, no traceback."""
    result = edge_cli("run", package, "x", "--ctx", "0", "-q")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_invalid_bench_sizes_are_a_clear_error(package: str) -> None:
    """`edge bench -p 0` (or a prompt larger than --ctx) exits 2 with no traceback."""
    for args in (["-p", "0"], ["-p", "16", "-n", "8", "--ctx", "16"]):
        result = edge_cli("bench", package, *args, "-r", "1", "-q")
        assert result.returncode == 2, args
        assert "Traceback" not in result.stderr


def test_quantize_then_eval_ppl(smollm2_package: Path, tmp_path: Path) -> None:
    """`edge quantize` writes an int8 package `edge info` describes, and `edge eval ppl`
    prints its perplexity; a quantized package cannot be quantized again (exit 2)."""
    out = tmp_path / "int8"
    done = edge_cli("quantize", str(smollm2_package), "-o", str(out), "--quant", "int8", "-q")
    assert done.returncode == 0, done.stderr
    assert "quantization: int8" in edge_cli("info", str(out)).stdout
    ppl = edge_cli(
        "eval", "ppl", str(out), "--max-tokens", "200", "--window", "128", "--stride", "64", "-q"
    )
    assert ppl.returncode == 0, ppl.stderr
    assert ppl.stdout.startswith("perplexity ") and "199 tokens" in ppl.stdout
    again = edge_cli("quantize", str(out), "-o", str(tmp_path / "again"), "--quant", "int4", "-q")
    assert again.returncode == 2 and "already quantized" in again.stderr
