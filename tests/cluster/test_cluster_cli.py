"""`edge cluster init|status` through the CLI, and the import rule: importing edge (and the
cluster modules) loads neither zmq, zeroconf nor torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edge.cli.main import main
from edge.cluster.keys import KeyStore

REPO = Path(__file__).resolve().parents[2]


def test_init_then_status_lists_a_worker(
    coordinator: KeyStore, start_worker, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(tmp_path / "cli"))
    assert main(["cluster", "init", "lab"]) == 0
    assert "cluster lab: public key" in capsys.readouterr().out
    assert main(["cluster", "init", "lab"]) == 2  # never overwrites keys silently
    assert "already has keys" in capsys.readouterr().err

    worker = start_worker(coordinator)
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(coordinator.root.parent))
    peer = worker.endpoint.removeprefix("tcp://")
    assert main(["cluster", "status", "home", "--peer", peer, "--no-mdns"]) == 0
    out = capsys.readouterr().out
    assert worker.node_id in out and " ok " in out and "nothing yet" in out


def test_importing_edge_and_the_cluster_modules_loads_no_zmq() -> None:
    code = (
        "import sys, edge, edge.cli.main\n"
        "import edge.cluster.client, edge.cluster.discovery, edge.cluster.frames\n"
        "import edge.cluster.keys, edge.cluster.pairing, edge.cluster.backend\n"
        "import edge.cluster.slice_runner, edge.cluster.status, edge.cluster.transport\n"
        "import edge.cluster.worker, edge.cluster.backend\n"
        "bad = [m for m in ('zmq', 'zeroconf', 'torch', 'onnx') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_missing_zmq_is_one_line_with_the_install_command(monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "zmq", None)  # as if pyzmq were not installed
    with pytest.raises(Exception, match=r"edge\[cluster\]"):
        from edge.cluster.errors import require_zmq

        require_zmq()
    assert main(["cluster", "init", "x"]) == 2
    assert 'pip install "edge[cluster]"' in capsys.readouterr().err


def test_pair_through_the_cli(tmp_path, monkeypatch, capsys) -> None:
    """The coordinator's `edge cluster pair home` shows a code; the worker's `edge cluster
    pair --code ... --peer ...` joins with it."""
    import os
    import re

    coordinator_dir = tmp_path / "coordinator"
    KeyStore(coordinator_dir).init_cluster("home")
    env = {**os.environ, "EDGE_CONFIG_DIR": str(coordinator_dir), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli.main", "cluster", "pair", "home",
         "--listen", "127.0.0.1:0", "--timeout", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        match = re.search(r"--code (\S+) --peer \S+:(\d+)", line)
        assert match, line + (proc.stderr.read() if proc.stderr else "")
        monkeypatch.setenv("EDGE_CONFIG_DIR", str(tmp_path / "worker"))
        code, port = match.groups()
        assert main(["cluster", "pair", "--code", code, "--peer", f"127.0.0.1:{port}"]) == 0
        assert "paired with cluster home" in capsys.readouterr().out
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "paired" in out
    node_id, _ = KeyStore(tmp_path / "worker").node()
    assert node_id in KeyStore(coordinator_dir).peers("home")
