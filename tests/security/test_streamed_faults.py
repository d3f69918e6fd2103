"""A package changed under a running model: files are opened once per load.

So a weight file truncated mid-generation gives a typed `EdgeError` naming the file (never the
SIGBUS a memory map of a shrunk file raises), and a package directory swapped for another one
mid-generation changes nothing: the run keeps reading the files it verified. Each run happens
in a child process, so a SIGBUS shows as a negative return code instead of killing pytest.
Streamed runs use the smallest memory budget the engine accepts: every block then streams from
disk through a window of one, so the damaged block is read again after the damage.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.timeout(300)

REPO = Path(__file__).resolve().parents[2]
CHILD_TIMEOUT = 240
LAST_BLOCK = "block.29"

CHILD = r"""
import json, os, sys
import edge
from edge.errors import BudgetTooSmallError
from edge.streaming import streamed_state

root, victim, mode, action = sys.argv[1:5]
MAX_CONTEXT, TOKENS = 256, 2


def load(path, budget):
    return edge.load(path, memory_budget=budget, max_context=MAX_CONTEXT, progress=False,
                     verify="sizes")


def minimum(path):
    try:
        load(path, 1)
    except BudgetTooSmallError as exc:
        return exc.minimum
    raise SystemExit("a budget of one byte was accepted")


def greedy(model, hook=None):
    tokens = []
    for r in model.stream("Hi", max_tokens=TOKENS, ignore_eos=True):
        tokens.append(r.token)
        if hook is not None and len(tokens) == 1:
            hook()
    return tokens


def truncate():
    os.truncate(victim, 4096)  # a page left: every block read and most embedding rows fail


def swap():
    os.rename(root, root + ".away")
    os.rename(victim, root)


budget = minimum(root) if mode == "streamed" else None
model = load(root, budget)
state = streamed_state(model.engine)
result = {"streamed": sorted(state.plan.policy.streamed) if state is not None else []}
result["base"] = greedy(model)
model.engine.reset()
got = []
try:
    for r in model.stream("Hi", max_tokens=TOKENS, ignore_eos=True):
        got.append(r.token)
        if len(got) == 1:
            truncate() if action == "truncate" else swap()
    result["error"] = None
except Exception as exc:
    result["error"] = {"type": type(exc).__name__, "message": str(exc),
                       "edge": isinstance(exc, edge.EdgeError)}
result["got"] = got
model.engine.close()
if action == "swap":
    # What the package now at `root` generates: it must differ, or the swap proved nothing.
    result["theirs"] = greedy(load(root, budget))
print("RESULT " + json.dumps(result), flush=True)
"""


def run_child(root: Path, victim: Path, mode: str, action: str, cache: Path) -> dict[str, Any]:
    """Run CHILD; fail with the signal's name if it died of one (SIGBUS is the one feared)."""
    env = {
        **os.environ,
        "EDGE_CACHE_DIR": str(cache),
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), str(victim), mode, action],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT,
        env=env,
        cwd=cache.parent,
        check=False,
    )
    if proc.returncode < 0:
        pytest.fail(
            f"the run died of {signal.Signals(-proc.returncode).name}:\n{proc.stderr[-3000:]}"
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def part_file(root: Path, hostile: Any, part: str) -> str:
    """The one weight file part `part` reads."""
    files = {t["file"] for t in hostile.part(hostile.read_manifest(root), part)["tensors"]}
    assert len(files) == 1, files
    return files.pop()


@pytest.mark.parametrize("victim", [LAST_BLOCK, "embed"])
@pytest.mark.parametrize("mode", ["streamed", "resident"])
def test_weight_file_truncated_mid_run(
    package: Path, hostile: Any, tmp_path: Path, mode: str, victim: str
) -> None:
    """Truncating a weight file (the last block's, or the embedding's) to one page after the
    first token: a streamed run, which reads that file again for the next token, raises an
    EdgeError naming it; a resident run already holds its weights and finishes with the
    undisturbed tokens, or raises the same typed error. Neither dies of SIGBUS."""
    name = part_file(package, hostile, victim)
    path = hostile.own(package / name)
    result = run_child(package, path, mode, "truncate", tmp_path / "cache")
    if mode == "streamed":
        if victim != "embed":
            assert victim in result["streamed"], result["streamed"]
        error = result["error"]
        assert error is not None, f"the truncated {name} was not noticed: {result}"
        assert error["edge"], f"untyped error {error['type']}: {error['message']}"
        assert name in error["message"], error["message"]
        assert result["got"] == result["base"][:1]
    elif result["error"] is None:
        assert result["got"] == result["base"]
    else:
        assert result["error"]["edge"] and name in result["error"]["message"], result["error"]


def test_package_swapped_mid_run_changes_nothing(
    smollm2_package: Path, package: Path, hostile: Any, tmp_path: Path
) -> None:
    """Renaming the package directory away after the first token and putting another valid
    package (same file names and sizes, blocks in reverse order, hashes consistent) at its path
    leaves the streamed generation exactly as an undisturbed one: the run reads the files it
    opened at load, not whatever now sits at their paths."""
    other = hostile.linked_copy(smollm2_package, tmp_path / "other")
    data, original = hostile.read_manifest(other), hostile.read_manifest(smollm2_package)
    blocks = [p["tensors"][0]["file"] for p in data["parts"] if p["kind"] == "block"]
    for mine, theirs in zip(blocks, reversed(blocks)):
        (other / mine).unlink()
        os.link(smollm2_package / theirs, other / mine)
        entry = hostile.file_entry(data, mine)
        assert entry["size"] == (other / mine).stat().st_size
        entry["sha256"] = hostile.file_entry(original, theirs)["sha256"]
    hostile.write_manifest(other, data)

    result = run_child(package, other, "streamed", "swap", tmp_path / "cache")
    assert result["error"] is None, result["error"]
    assert result["theirs"] != result["base"], "test premise: the other package differs"
    assert result["got"] == result["base"]
