"""`edge chat` as a person uses it: the banner, /help, /system, /reset, /save and /load,
/stats, history kept across turns, and Ctrl-C (SIGINT) stopping a reply, not the chat."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EDGE = [sys.executable, "-m", "edge.cli.main"]
ENV = {**os.environ, "PYTHONIOENCODING": "utf-8"}


def _chat(package: Path, script: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGE, "chat", str(package), "-n", "8", "-q", *extra],
        input=script,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
        check=False,
    )


def test_chat_commands(smollm2_package: Path, tmp_path: Path) -> None:
    saved = tmp_path / "talk.json"
    script = "\n".join(
        [
            "/help",
            "/system You answer in one word.",
            "Hi!",
            "/stats",
            f"/save {saved}",
            "/reset",
            "/stats",
            f"/load {saved}",
            "/stats",
            "/nonsense",
            f"/load {tmp_path / 'missing.json'}",
            "/exit",
        ]
    )
    result = _chat(smollm2_package, script + "\n")
    assert result.returncode == 0, result.stderr[-2000:]
    err = result.stderr
    assert "context" in err.splitlines()[0] and "/help for commands" in err.splitlines()[0]
    assert "/save FILE" in err and "system message set" in err
    messages = json.loads(saved.read_text())
    assert [m["role"] for m in messages] == ["system", "user", "assistant"]
    assert messages[0]["content"] == "You answer in one word." and messages[2]["content"]
    stats = [line for line in err.splitlines() if line.startswith("context: ")]
    assert "3 messages" in stats[0] and "tok/s" in stats[0]
    assert "1 messages" in stats[1]  # the reset kept the system message only
    assert "3 messages" in stats[2]  # /load restored the conversation
    assert "unknown command" in err and "cannot load" in err


def test_chat_load_refuses_what_is_not_a_conversation(
    smollm2_package: Path, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"role": "root", "content": "x"}]))
    result = _chat(smollm2_package, f"/load {bad}\n/stats\n/exit\n")
    assert result.returncode == 0
    assert "cannot load" in result.stderr and "0 messages" in result.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child needs POSIX")
def test_ctrl_c_stops_the_reply_not_the_chat(smollm2_package: Path) -> None:
    proc = subprocess.Popen(
        [*EDGE, "chat", str(smollm2_package), "-n", "4000", "-q"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
        # A test run started in the background inherits SIGINT ignored, and Python then
        # installs no KeyboardInterrupt handler: give the chat the terminal's default.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("Write a very long story about the sea, in many chapters.\n")
    proc.stdin.flush()
    proc.stdout.read(1)  # the reply has started
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.stdin.write("/stats\n/exit\n")
    proc.stdin.flush()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    assert "[stopped]" in err and "2 messages" in err
