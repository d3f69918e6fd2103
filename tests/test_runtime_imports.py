"""The runtime works on a machine with only numpy + onnxruntime: no torch, transformers or onnx."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.import_blocker import BLOCK_EXPORT_STACK

# Run in a fresh interpreter where importing the export/test-only stacks fails, as on a device
# where they are not installed. `onnxruntime` must stay importable, so match names exactly.
SCRIPT = (
    BLOCK_EXPORT_STACK
    + r"""

import onnxruntime  # noqa: F401  the one ONNX package a device has

import devices  # noqa: F401
import edge
import edge.detokenizer  # noqa: F401
import edge.models.pull  # noqa: F401
import edge.sampling  # noqa: F401
import memory_sched  # noqa: F401
import devices.backends.openvino_runtime  # noqa: F401
import devices.backends.ort_cpu  # noqa: F401
import devices.discovery  # noqa: F401
import devices.kernels  # noqa: F401
import devices.spec_forward  # noqa: F401
import edge.cli.main  # noqa: F401
import edge.planner  # noqa: F401
import edge.speculative  # noqa: F401
import edge.streaming.backend  # noqa: F401
import memory_sched.prefetcher  # noqa: F401
from edge.engine import Engine, EngineConfig
from edge.package import open_package
from edge.tokenizer import Tokenizer

root = sys.argv[1]
package = open_package(root)
tokenizer = Tokenizer.from_package(package)
engine = Engine(package, EngineConfig(max_context=256))
ids = tokenizer.encode("The capital of France is")
logits = engine.prefill(ids)[0]
generated = []
for _ in range(8):
    token = int(logits.argmax())
    generated.append(token)
    logits = engine.decode(token)
result = {"ids": generated, "text": tokenizer.decode(generated)}

load = getattr(edge, "load", None)
if load is not None:
    result["sdk_text"] = load(root).generate("Hello", max_tokens=8)

result["loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
result["attempts"] = sorted(set(attempts))
print("RESULT " + json.dumps(result))
"""
)


def test_runtime_imports_and_generates_without_torch_transformers_onnx(
    smollm2_package: Path, tmp_path: Path
) -> None:
    """edge loads a package and generates with torch, transformers and onnx uninstalled."""
    env = {**os.environ, "EDGE_CACHE_DIR": str(tmp_path / "cache"), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(smollm2_package)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line.removeprefix("RESULT "))
    print(result["text"], result.get("sdk_text"), result["attempts"])

    assert result["loaded"] == []  # torch / transformers / onnx absent from sys.modules
    assert len(result["ids"]) == 8
    assert result["text"].strip(), "greedy decoding produced no text"
    if "sdk_text" in result:
        assert result["sdk_text"].strip(), "edge.load(...).generate produced no text"
