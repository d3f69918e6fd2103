"""`edge serve` as a user runs it: a real subprocess of the console script on loopback."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

openai = pytest.importorskip("openai")


def edge_command() -> list[str]:
    script = Path(sys.executable).with_name("edge")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edge.cli.main"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*edge_command(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_non_loopback_host_needs_an_api_key() -> None:
    result = run("serve", "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2
    assert "--api-key" in result.stderr and "0.0.0.0" in result.stderr
    assert result.stderr.count("\n") == 1  # one error line, no traceback


def test_a_port_in_use_is_one_error_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--port", str(port))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr


def test_help_names_the_endpoints() -> None:
    result = run("serve", "--help")
    assert result.returncode == 0
    for text in (
        "/v1/chat/completions",
        "--api-key",
        "--memory-budget",
        "--draft",
        "--queue",
        "--cors-origin",
        "--kv-slots",
    ):
        assert text in result.stdout


def test_serve_answers_the_openai_client_then_stops_on_ctrl_c(
    tiny_package: Path, make_client: Callable[..., Any]
) -> None:
    """`edge serve PKG --port 0` prints where it listens, serves a chat with the key, and ends
    cleanly on SIGINT."""
    proc = subprocess.Popen(
        [*edge_command(), "serve", str(tiny_package), "--port", "0", "-t", "1", "--ctx", "256"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "EDGE_API_KEY": "cli-key"},
    )
    try:
        line = proc.stderr.readline()
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url, line
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url.group(0) + "/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                assert time.monotonic() < deadline, "the server never became ready"
                time.sleep(0.1)
        server = url.group(0)
        reply = make_client(server, api_key="cli-key").chat.completions.create(
            model=tiny_package.name,
            messages=[{"role": "user", "content": "Hello"}],
            max_tokens=4,
        )
        assert reply.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            make_client(server, api_key="other").models.list()
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(30)
    assert code in (0, 130), proc.stderr.read()


def test_the_runtime_and_cli_do_not_import_the_server_stack() -> None:
    """`import edge`, the CLI and `edge.server` itself load no Starlette, uvicorn or Prometheus:
    a device without the `serve` extra runs everything else."""
    code = (
        "import sys, edge, edge.cli.main, edge.server, edge.server.schemas\n"
        "m = edge.load\n"
        "bad = [n for n in sys.modules if n.split('.')[0] in "
        "('starlette', 'uvicorn', 'prometheus_client', 'openai')]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
