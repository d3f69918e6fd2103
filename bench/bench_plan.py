"""The planner's predictions against measured runs: decode tokens/s, time to first token and
peak RSS, for SmolLM2 (fp32, int4) and Qwen2.5-Coder-0.5B int4, three plans each.

    python bench/bench_plan.py [--runs 3] [--fp32 PKG] [--int4 PKG] [--qwen PKG]

Plans: (1) what `make_plan` picks on this machine with no budget (ONNX Runtime and OpenVINO
offered), (2) three segments ONNX Runtime / OpenVINO / ONNX Runtime (`evaluate`, a placement
chosen by hand), (3) what `make_plan` picks under a budget of the streamed engine's
minimum plus a third of the blocks' bytes (streamed). Each run is a fresh
process (bench/plan_children.py) loading the model per the plan, a 64-token prompt and 32
greedy decode steps at max_context 256, 2 threads; medians over `--runs` alternating runs. The
CPU profile is remeasured first (devices/microbench.py), so predictions see the machine as
loaded as the runs do. Peak RSS is the child's VmHWM: Linux keeps `ru_maxrss` across execve,
so a child forked from a large parent reports at least the parent's RSS. Prints a markdown
table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_plan_memory import DEFAULTS, child  # noqa: E402

from edge.format import read_manifest  # noqa: E402
from edge.placement import Placement  # noqa: E402
from edge.planner import Device, Plan, PlanConfig, evaluate, make_plan, stream_minimum  # noqa: E402
from edge.planner.machine import import_footprint  # noqa: E402

MiB = 1 << 20
PROMPT, DECODE, CONTEXT = 64, 32, 256
LABELS = {
    "fp32": "SmolLM2-135M fp32",
    "int4": "SmolLM2-135M int4",
    "qwen": "Qwen2.5-Coder-0.5B int4",
}


def plans(path: Path, cpu) -> list[tuple[str, Plan]]:
    manifest = read_manifest(path)
    config = PlanConfig(
        footprint=import_footprint(),
        max_context=CONTEXT,
        prompt_tokens=PROMPT,
        context_tokens=PROMPT + DECODE,
        prefill_chunk=PROMPT,
    )
    devices = [Device(cpu, "ort_cpu"), Device(cpu, "openvino")]
    auto = make_plan(manifest, devices, config)
    n = len(manifest.parts)
    third = n // 3
    split = evaluate(
        manifest,
        devices,
        Placement.split(n, [(0, "ort_cpu"), (third, "openvino"), (2 * third, "ort_cpu")]),
        config,
    )
    minimum = stream_minimum(
        manifest, max_context=CONTEXT, prefill_chunk=PROMPT, footprint=import_footprint()
    )
    weights = sum(t.nbytes for p in manifest.blocks for t in p.tensors)
    budget = minimum + weights // 3  # about a third of the blocks pinned, the rest streamed
    streamed = make_plan(
        manifest, [Device(cpu, "ort_cpu", budget), Device(cpu, "openvino", budget)], config
    )
    return [("auto", auto), ("ort/ov/ort", split), (f"budget {budget / MiB:.0f} MiB", streamed)]


def job(path: Path, plan: Plan) -> dict:
    base = {
        "job": "model",
        "package": str(path),
        "max_context": CONTEXT,
        "prompt": PROMPT,
        "decode": DECODE,
        "threads": 2,
        "prefill_chunk": plan.prefill_chunk,
    }
    if plan.streaming is not None:
        return {**base, "budget": plan.streaming.budget}
    return {**base, "placement": plan.placement().to_dict()}


def describe(plan: Plan) -> str:
    if plan.streaming is not None:
        s = plan.streaming
        return f"streamed: {len(s.pinned)} pinned, {len(s.streamed)} streamed, window {s.window}"
    return " + ".join(f"{s.backend} [{s.start},{s.end})" for s in plan.decode)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    for key, path in DEFAULTS.items():
        parser.add_argument(f"--{key}", type=Path, default=path)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from devices.microbench import load_or_measure, measured_profile

    bench, _ = load_or_measure(refresh=True)
    cpu = measured_profile()
    print(
        f"CPU profile measured now: {bench.bandwidth_gbs:.1f} GB/s memory read, "
        f"{bench.fp32_gflops:.0f} GFLOP/s fp32, load average {bench.load_average}\n"
    )
    print(
        "| model | plan | placement | decode tok/s predicted | measured | TTFT ms predicted "
        "| measured | peak RSS MiB predicted | measured | RSS error |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in DEFAULTS:
        path = getattr(args, key)
        cases = plans(path, cpu)
        results: dict[str, list[dict]] = {name: [] for name, _ in cases}
        for _ in range(args.runs):  # alternate, so that noise hits every plan alike
            for name, plan in cases:
                results[name].append(child(job(path, plan)))
        for name, plan in cases:
            runs = results[name]
            tps = statistics.median(DECODE / r["decode_s"] for r in runs)
            ttft = statistics.median(r["prefill_s"] for r in runs)
            rss = max(r["stages"]["decode"]["VmHWM"] for r in runs)
            print(
                f"| {LABELS[key]} | {name} | {describe(plan)} | "
                f"{plan.decode_tokens_per_s:.1f} | {tps:.1f} | {plan.ttft_s * 1e3:.0f} | "
                f"{ttft * 1e3:.0f} | {plan.peak_bytes / MiB:.0f} | {rss / MiB:.0f} | "
                f"{(plan.peak_bytes - rss) / rss:+.1%} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
