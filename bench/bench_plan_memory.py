"""Measure the constants of the planner's memory model (edge/planner/memory.py) on this machine.

    python bench/bench_plan_memory.py [--fp32 PKG] [--int4 PKG] [--qwen PKG] [--skip-fit]

Every number comes from a fresh process (bench/plan_children.py) reading /proc/self/status:

1. process: RSS after importing python + numpy + edge, then onnxruntime (the resident engine's
   backends) and edge.streaming (llvmlite); the tokenizer's RSS per byte of tokenizer.json
   (SmolLM2 3.5 MB, Qwen2.5 11.4 MB).
2. per runtime (ort_cpu, openvino): one segment holding the embedding, one block, ten blocks or
   the head, loaded through the `devices` API, then a 64-token prompt and 16 decode steps; the
   growth of RssAnon (memory the runtime allocated) and RssFile (package pages mapped and
   touched, plus the runtime's code pages) over the process before loading. A least-squares fit
   over the three packages gives the runtime's fixed cost, its cost per block and its bytes per
   byte on disk for each tensor class; the load transient (VmHWM above VmRSS after loading the
   head); OpenVINO's growth per decoded token (10 blocks at 16 and 64 tokens, 30 at 16).
3. streamed engine: `Model` with a memory budget (the minimum the engine accepts, and one
   pinning everything): the JIT's code pages, and a fit of what the plan does not account for
   against the tokenizer's size (TOKENIZER_FACTOR, STREAM_RUNTIME).
4. validation: whole models as the engine runs them (one backend, two, three segments,
   streamed) against `edge.planner`'s prediction with the constants as they are now.

Peak RSS is the child's VmHWM: Linux keeps `ru_maxrss` across execve, so a child forked from
a large parent would report at least the parent's RSS. Prints the fitted constants and a
markdown table. Packages default to the ones the other
benches make (~/.cache/edge/...).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.format import read_manifest  # noqa: E402
from edge.planner.costs import CLASSES, OTHER, model_costs  # noqa: E402
from edge.planner.machine import import_footprint  # noqa: E402

MiB = 1 << 20
CHILD = str(REPO / "bench" / "plan_children.py")
DEFAULTS = {
    "fp32": Path.home() / ".cache/edge/packages/smollm2-135m",
    "int4": Path.home() / ".cache/edge/bench/SmolLM2-135M-Instruct.Q4_1-int4",
    "qwen": Path.home() / ".cache/edge/packages/qwen2.5-coder-0.5b",  # `edge pull` + default export
}


def child(job: dict) -> dict:
    proc = subprocess.run(
        [sys.executable, CHILD, json.dumps(job)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=900,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"job {job} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")


def delta(result: dict, stage: str, field: str, since: str = "ready") -> int:
    stages = result["stages"]
    return stages[stage][field] - stages[since][field]


def process_rows(packages: dict[str, Path]) -> None:
    stages = child({"job": "base"})["stages"]
    base = stages["imports"]["VmRSS"]
    ort = stages["onnxruntime"]["VmRSS"] - base
    streaming = stages["streaming"]["VmRSS"] - stages["onnxruntime"]["VmRSS"]
    print(
        f"PROCESS_BASE: {base / MiB:.1f} MiB (python + numpy + edge); RESIDENT_IMPORTS "
        f"(onnxruntime): {ort / MiB:.1f} MiB; edge.streaming (llvmlite): "
        f"{streaming / MiB:.1f} MiB"
    )
    for label, path in packages.items():
        size = read_manifest(path).files
        tok = next(f.size for f in size if f.path == "tokenizer.json")
        result = child({"job": "tokenizer", "package": str(path)})
        grown = delta(result, "tokenizer", "VmRSS")
        peak = delta(result, "tokenizer", "VmHWM")
        print(
            f"tokenizer {label}: {tok / 1e6:.1f} MB file, +{grown / MiB:.1f} MiB RSS "
            f"({grown / tok:.2f}x), load peak +{peak / MiB:.1f} MiB ({peak / tok:.2f}x)"
        )


def part_jobs(packages: dict[str, Path], backend: str) -> list[tuple[dict, dict]]:
    jobs = []
    for path in packages.values():
        n = len(read_manifest(path).parts)
        for start, end in ((0, 1), (1, 2), (1, 11), (n - 1, n)):
            jobs.append(
                {
                    "job": "parts",
                    "package": str(path),
                    "backend": backend,
                    "start": start,
                    "end": end,
                    "prompt": 64,
                    "decode": 16,
                }
            )
    results = []
    for job in jobs:
        results.append((job, child(job)))
        print(
            f"  measured {backend} {Path(job['package']).name} [{job['start']}, {job['end']})",
            file=sys.stderr,
        )
    return results


def fit(rows: list[tuple[dict, dict]], field: str, stage: str = "prefill") -> dict[str, float]:
    """Least squares: growth of `field` at `stage` ("loaded", or "prefill": after the prompt,
    before decode's growth) = fixed + per_block * blocks + sum_c f_c * bytes_c. Norms and biases
    ("other", a few KiB per block) are taken at 1x rather than fitted: too small to determine."""
    features, target = [], []
    present = set()
    for job, result in rows:
        costs = model_costs(read_manifest(Path(job["package"])))
        parts = costs.parts[job["start"] : job["end"]]
        by_class = {c: sum(p.class_bytes.get(c, 0) for p in parts) for c in CLASSES}
        present |= {c for c, b in by_class.items() if b and c != OTHER}
        features.append((1.0, sum(p.kind == "block" for p in parts), by_class))
        target.append(delta(result, stage, field) - by_class[OTHER])
    classes = [c for c in CLASSES if c in present]
    a = np.array([[f[0], f[1], *(f[2][c] / MiB for c in classes)] for f in features])
    solution, *_ = np.linalg.lstsq(a, np.array(target, float) / MiB, rcond=None)
    residual = a @ solution - np.array(target) / MiB
    out = {
        "fixed_mib": solution[0],
        "per_block_mib": solution[1],
        **{c: solution[2 + i] for i, c in enumerate(classes)},
        "max_abs_residual_mib": float(np.abs(residual).max()),
    }
    return out


def runtime_rows(packages: dict[str, Path]) -> None:
    for backend in ("ort_cpu", "openvino"):
        rows = part_jobs(packages, backend)
        for field, what in (("RssAnon", "allocated"), ("RssFile", "mapped")):
            for stage in ("prefill", "loaded"):
                solution = fit(rows, field, stage)
                print(
                    f"{backend} {what} ({stage}): "
                    + ", ".join(f"{k}={v:.3f}" for k, v in solution.items())
                )
        for job, result in rows:
            stages = result["stages"]
            transient = stages["loaded"]["VmHWM"] - stages["loaded"]["VmRSS"]
            growth = delta(result, "decode", "VmRSS", since="prefill")
            print(
                f"  {Path(job['package']).name} [{job['start']}, {job['end']}): load "
                f"transient {transient / MiB:.1f} MiB, growth over 16 decode steps "
                f"{growth / MiB:.1f} MiB"
            )
        if backend == "openvino":
            growth_rows(packages["int4"])


def growth_rows(path: Path) -> None:
    for start, end, decode in ((1, 11, 16), (1, 11, 64), (1, 31, 16), (1, 31, 64)):
        result = child(
            {
                "job": "parts",
                "package": str(path),
                "backend": "openvino",
                "start": start,
                "end": end,
                "prompt": 64,
                "decode": decode,
            }
        )
        growth = delta(result, "decode", "VmRSS", since="prefill")
        print(
            f"  openvino growth, blocks [{start}, {end}), {decode} tokens: "
            f"{growth / MiB:.1f} MiB ({growth / decode / MiB:.2f} MiB/token)"
        )


def stream_rows(packages: dict[str, Path]) -> None:
    """Streamed engine at its minimum budget and with everything pinned: the JIT's code pages
    (RssFile after the first prompt minus after loading), then least squares of what is left
    over the process base, pinned weights, window, KV cache, mapped embedding rows and JIT
    against [tokenizer bytes, 1]: TOKENIZER_FACTOR and STREAM_RUNTIME."""
    from edge.planner import memory, stream_minimum
    from edge.planner.stream import _pinned_bytes, engine_stream_plan

    features, target = [], []
    for label, path in packages.items():
        manifest = read_manifest(path)
        costs = model_costs(manifest)
        quantized = any("nbits" in c for p in costs.parts for c in p.class_bytes)
        for budget in (
            stream_minimum(
                manifest, max_context=128, prefill_chunk=64, footprint=import_footprint()
            ),
            4 << 30,
        ):
            result = child(
                {
                    "job": "model",
                    "package": str(path),
                    "max_context": 128,
                    "prompt": 64,
                    "decode": 16,
                    "threads": 2,
                    "budget": budget,
                }
            )
            jit = delta(result, "decode", "RssFile", since="loaded")
            plan = engine_stream_plan(
                manifest, costs.tokenizer_bytes, budget, 128, 64, 4, import_footprint()
            )
            known = (
                memory.PROCESS_BASE
                + _pinned_bytes(manifest, plan.policy.pinned)
                + plan.pool_bytes
                + memory.kv_resident(manifest.spec, manifest.spec.num_layers, 80)
                + memory.mapped_embedding(costs, 80)
                + (jit if quantized else 0)
            )
            rest = result["stages"]["decode"]["VmHWM"] - known
            print(
                f"  streamed {label} at {budget / MiB:.0f} MiB: JIT code pages "
                f"{jit / MiB:.1f} MiB, left over {rest / MiB:.1f} MiB"
            )
            features.append((costs.tokenizer_bytes / MiB, 1.0))
            target.append(rest / MiB)
    solution, *_ = np.linalg.lstsq(np.array(features), np.array(target), rcond=None)
    residual = np.array(features) @ solution - np.array(target)
    print(
        f"streamed: TOKENIZER_FACTOR={solution[0]:.2f}, STREAM_RUNTIME={solution[1]:.1f} MiB "
        f"(max residual {np.abs(residual).max():.1f} MiB)"
    )


def validation_cases(packages: dict[str, Path]) -> list[tuple[str, Path, dict]]:
    from edge.planner import stream_minimum

    ov = {"INFERENCE_PRECISION_HINT": "f32"}
    cases = []
    for label, path in packages.items():
        n = len(read_manifest(path).parts)
        third = n // 3
        cases.append((f"{label} ort_cpu", path, {"placement": None}))
        cases.append(
            (
                f"{label} openvino",
                path,
                {
                    "placement": {
                        "segments": [{"start": 0, "end": n, "backend": "openvino", "options": ov}]
                    }
                },
            )
        )
        cases.append(
            (
                f"{label} ort/ov/ort",
                path,
                {
                    "placement": {
                        "segments": [
                            {"start": 0, "end": third, "backend": "ort_cpu"},
                            {
                                "start": third,
                                "end": 2 * third,
                                "backend": "openvino",
                                "options": ov,
                            },
                            {"start": 2 * third, "end": n, "backend": "ort_cpu"},
                        ]
                    }
                },
            )
        )
        minimum = stream_minimum(read_manifest(path), max_context=128, prefill_chunk=64)
        cases.append((f"{label} streamed at the minimum", path, {"budget": minimum}))
        cases.append((f"{label} streamed, all pinned", path, {"budget": 4 << 30}))
    return cases


def predicted_peak(path: Path, job: dict) -> int:
    """The planner's prediction for a job of plan_children.py."""
    from devices.microbench import measured_profile
    from edge.placement import Placement
    from edge.planner import Device, PlanConfig, evaluate, make_plan

    cpu = measured_profile()
    manifest = read_manifest(path)
    config = PlanConfig(
        footprint=import_footprint(),
        max_context=job["max_context"],
        prompt_tokens=job["prompt"],
        context_tokens=job["prompt"] + job["decode"],
        prefill_chunk=job.get("prefill_chunk", 256),
        mode="streamed" if job.get("budget") else "auto",
    )
    if job.get("budget"):
        return make_plan(manifest, [Device(cpu, "ort_cpu", job["budget"])], config).peak_bytes
    placement = (
        Placement.from_dict(job["placement"])
        if job.get("placement")
        else Placement.single(len(manifest.parts))
    )
    devices = [Device(cpu, "ort_cpu"), Device(cpu, "openvino")]
    return evaluate(manifest, devices, placement, config).peak_bytes


def validation_rows(packages: dict[str, Path], prompt: int, decode: int) -> None:
    print("\n| case | predicted MiB | measured peak RSS MiB | error |\n|---|---|---|---|")
    for label, path, extra in validation_cases(packages):
        job = {
            "job": "model",
            "package": str(path),
            "max_context": 128,
            "prompt": prompt,
            "decode": decode,
            "threads": 2,
            **extra,
        }
        measured = child(job)["stages"]["decode"]["VmHWM"]
        predicted = predicted_peak(path, job)
        print(
            f"| {label} | {predicted / MiB:.1f} | {measured / MiB:.1f} | "
            f"{(predicted - measured) / measured:+.1%} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for key, path in DEFAULTS.items():
        parser.add_argument(f"--{key}", type=Path, default=path)
    parser.add_argument("--skip-fit", action="store_true", help="only the validation table")
    args = parser.parse_args()
    packages = {key: getattr(args, key) for key in DEFAULTS}
    if not args.skip_fit:
        process_rows(packages)
        runtime_rows(packages)
        stream_rows(packages)
    validation_rows(packages, prompt=64, decode=16)


if __name__ == "__main__":
    main()
