"""Every plan `edge plan` proposes is one `edge run --plan` runs: for each built-in profile and
for this machine, the JSON plan of the real SmolLM2 package either runs here (through the
backends present, falling back to ONNX Runtime's CPU provider with the backend's own reason)
or is refused with a clear error before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge.cli.main import main

PROFILES = (
    "rpi4",
    "rpi5",
    "jetson-orin-nano",
    "snapdragon-8-gen-3",
    "laptop-x86",
    "core-ultra-7-155h",
    None,
)


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: p or "this-machine")
def test_every_profile_plan_runs_or_is_refused_up_front(
    profile: str | None, smollm2_package: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["plan", str(smollm2_package), "--json"] + (["--profile", profile] if profile else [])
    assert main(args) == 0
    plan = json.loads(capsys.readouterr().out)
    backends = {s["backend"] for s in plan["placement"]["segments"]}
    # A plan names only registered backends: the engine can build every segment it proposes.
    from devices.registry import names

    assert backends <= set(names())
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(plan))
    code = main(
        ["run", str(smollm2_package), "The capital of France is", "-n", "4", "--plan", str(path)]
    )
    out, err = capsys.readouterr()
    if code == 0:
        assert out.strip(), "the plan ran but wrote no text"
        for backend in backends - {"ort_cpu", "openvino"}:
            assert backend in err, f"a fallback from {backend} must say why"
    else:
        assert code == 2 and "Traceback" not in err and err.strip()
