"""edge devices: what this machine has to run models on, and what to install to use the rest."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge.errors import ConfigError

if TYPE_CHECKING:
    from devices.discovery import Machine
    from devices.microbench import Microbench
    from devices.profiles import DeviceProfile

HELP = "list this machine's CPU, memory, GPUs, NPUs and runtimes, and what is missing"
GIB = float(1 << 30)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print everything as one JSON object")
    parser.add_argument(
        "--refresh",
        action="store_true",
        help="remeasure the CPU micro-benchmark instead of using the cached one",
    )
    parser.add_argument(
        "--no-bench", action="store_true", help="skip the micro-benchmark (bandwidth, GEMM rates)"
    )
    parser.add_argument(
        "--save-profile",
        type=Path,
        default=None,
        metavar="FILE",
        help="also write this machine's measured profile to FILE (JSON, named after FILE), "
        "to share it: `edge plan MODEL --profile FILE` plans for this machine anywhere",
    )
    parser.add_argument(
        "--probe-torch",
        action="store_true",
        help="also ask torch for CUDA/MPS devices (importing torch takes seconds)",
    )


def _gib(n: int | None) -> str:
    return "?" if n is None else f"{n / GIB:.1f} GiB"


def _cpu_lines(machine: Machine) -> list[tuple[str, str]]:
    from devices.cpu_info import CPUINFO_FEATURES

    cpu = machine.cpu
    order = list(dict.fromkeys(CPUINFO_FEATURES.values()))
    isa = " ".join(sorted(cpu.features, key=order.index)) or "none of the ones edge uses"
    llvm = f", LLVM: {cpu.llvm_cpu}" if cpu.llvm_cpu else ""
    lines = [
        (
            "cpu",
            f"{cpu.model} ({cpu.arch}{llvm}): {cpu.physical_cores} physical / "
            f"{cpu.logical_cores} logical cores, {cpu.usable_cores} usable here",
        ),
        ("isa", isa),
    ]
    if cpu.disagreements:
        lines.append(("", f"/proc/cpuinfo and LLVM disagree on: {' '.join(cpu.disagreements)}"))
    return lines


def _memory_line(machine: Machine) -> str:
    mem = machine.memory
    limit = (
        f"cgroup limit {_gib(mem.cgroup_limit)} ({_gib(mem.cgroup_usage)} used)"
        if mem.cgroup_limit is not None
        else "no cgroup limit"
    )
    return (
        f"{_gib(mem.total)} total, {_gib(mem.available)} available; {limit}; "
        f"budget {_gib(mem.budget)}"
    )


def _via(names: tuple[str, ...]) -> str:
    return f"usable via {', '.join(names)}" if names else "no installed runtime can use it"


def _hardware_lines(machine: Machine) -> list[tuple[str, str]]:
    board = machine.board
    text = f"{board.model} ({board.family})" if board else "none (no device tree)"
    if machine.jetson_release:
        text += f"; L4T {machine.jetson_release}"
    lines = [("board", text)]
    for gpu in machine.gpus or ():
        memory = f"{_gib(gpu.memory_total)}" + (
            " shared with the CPU" if gpu.unified_memory else f", {_gib(gpu.memory_free)} free"
        )
        lines.append(("gpu", f"{gpu.name}: {memory} [{gpu.source}]; {_via(gpu.usable_via)}"))
    if not machine.gpus:
        lines.append(("gpu", "none found"))
    for npu in machine.npus:
        lines.append(("npu", f"{npu.name} [{npu.evidence}]; {_via(npu.usable_via)}"))
    if not machine.npus:
        lines.append(("npu", "none found"))
    return lines


def _runtime_lines(machine: Machine) -> list[tuple[str, str]]:
    ort = machine.onnxruntime
    lines = [("onnxruntime", f"{ort.version}: {', '.join(ort.providers)}")]
    ov = machine.openvino
    lines.append(
        (
            "openvino",
            "not installed"
            if ov is None
            else f"{ov.version.split('-')[0]}: "
            + ", ".join(f"{d.name} ({d.full_name})" for d in ov.devices),
        )
    )
    torch = machine.torch
    unprobed = "not installed" if machine.torch_probed else "not probed (--probe-torch)"
    lines.append(
        (
            "torch",
            unprobed
            if torch is None
            else f"{torch.version}: cuda {'yes' if torch.cuda_available else 'no'}, "
            f"mps {'yes' if torch.mps_available else 'no'}",
        )
    )
    ports = machine.serial_ports
    serial = (
        "pyserial not installed"
        if ports is None
        else ", ".join(f"{p.device} ({p.description})" for p in ports) or "no serial ports"
    )
    lines.append(("serial", serial))
    return lines


def _bench_line(bench: Microbench, cached: bool) -> str:
    when = (
        f"cached from {bench.measured_at}, --refresh remeasures"
        if cached
        else (f"measured now in {bench.seconds:.1f} s")
    )
    busy = (
        (
            f"; the machine was busy (load {bench.load_average:.1f} on {bench.cores} cores), "
            "so these read low: --refresh when it is idle"
        )
        if bench.contended
        else ""
    )
    return (
        f"memory read {bench.bandwidth_1t_gbs:.1f} GB/s (1 thread), "
        f"{bench.bandwidth_gbs:.1f} GB/s ({bench.cores} threads); fp32 GEMM "
        f"{bench.fp32_gflops:.0f} GFLOP/s; int8 GEMM {bench.int8_gops:.0f} GOP/s "
        f"({when}{busy})"
    )


def _hint_lines(machine: Machine) -> list[tuple[str, str]]:
    if not machine.hints:
        return [("missing", "nothing: every accelerator found has a runtime")]
    return [
        (
            "missing" if i == 0 else "",
            f"{h.unlocks}: {h.install}{' (optional)' if h.optional else ''} -- {h.reason}",
        )
        for i, h in enumerate(machine.hints)
    ]


def render(machine: Machine, bench: tuple[Microbench, bool] | None) -> str:
    """The human-readable report, one "label  text" row per line."""
    rows = [
        *_cpu_lines(machine),
        ("memory", _memory_line(machine)),
        *_hardware_lines(machine),
        *_runtime_lines(machine),
    ]
    if bench is not None:
        rows.append(("measured", _bench_line(*bench)))
    rows += _hint_lines(machine)
    return "\n".join(f"{label:<12} {text}" for label, text in rows)


def save_profile(profile: DeviceProfile, path: Path) -> DeviceProfile:
    """Write `profile`, renamed after the file ("my-pi5.json": "my-pi5"), so that plans made
    from it elsewhere name the machine rather than "this-machine"."""
    from devices.profiles import profiles_json

    named = dataclasses.replace(profile, name=path.stem or profile.name, memory_pool=None)
    try:
        path.write_text(profiles_json([named]) + "\n", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the profile to {path}: {exc.strerror or exc}") from exc
    return named


def main(args: argparse.Namespace) -> int:
    from devices.discovery import discover
    from devices.microbench import load_or_measure, profile_from

    if args.save_profile is not None and args.no_bench:
        raise ConfigError("--save-profile needs the micro-benchmark: leave out --no-bench")
    machine = discover(probe_torch=args.probe_torch)
    bench = None if args.no_bench else load_or_measure(machine, refresh=args.refresh)
    if args.save_profile is not None and bench is not None:
        saved = save_profile(profile_from(bench[0], machine), args.save_profile)
        print(
            f"edge devices: profile {saved.name!r} written to {args.save_profile} "
            f"(edge plan MODEL --profile {args.save_profile})",
            file=sys.stderr,
        )
    if args.json:
        data: dict = {"machine": machine.to_dict()}
        if bench is not None:
            data["microbench"] = {**dataclasses.asdict(bench[0]), "cached": bench[1]}
            data["profile"] = dataclasses.asdict(profile_from(bench[0], machine))
        print(json.dumps(data, indent=2))
        return 0
    print(render(machine, bench))
    return 0
