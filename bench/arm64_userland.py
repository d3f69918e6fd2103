"""A real arm64 check without a Pi: the Raspberry Pi example in a Debian arm64 userland (qemu).

What it exercises for real, on aarch64 code: PyPI's aarch64 wheels of the runtime (numpy,
onnxruntime, tokenizers, llvmlite, psutil: what a Pi installs, no torch), `pip install` of edge
itself, the planner measuring an arm64 "machine", and the streamed int4 path, whose llvmlite JIT
kernel compiles for the aarch64 triple (4-lane NEON vectors, fp32 activations: no VNNI there).
The greedy reply of `examples/raspberry_pi.py` under arm64 must equal the reply of the same
example, package, prompt and budget on this x86 host, run with fp32 kernel activations (what
"auto" picks on arm64; on AVX-512 VNNI hosts "auto" would pick int16). With `--kernel-tests`
the JIT kernel's tests (against numpy and ONNX Runtime's MatMulNBits) also run under arm64.
What it does not show: the speed or memory of a real Pi (qemu translates every instruction),
nor a Pi's kernel, storage or thermal limits.

Needs root (debootstrap, chroot, binfmt_misc) on a Debian/Ubuntu x86_64 host with network
access to a Debian mirror and PyPI:

    apt-get install -y qemu-user-static debootstrap binfmt-support
    python bench/arm64_userland.py --kernel-tests      # from the project's venv

Idempotent: the arm64 root is built once under ~/.cache/edge/arm64-root (debootstrap, then a
venv with the pinned wheels: host's versions) and reused; the source tree and the package are
copied in afresh on every run. On a 2-core x86_64 VM the first run took 8.5 minutes
(debootstrap 3, wheels 1.5, the example 2.5 with its one-off machine measurement, the kernel
tests 1.3, all under emulation), later ones 3-3.5. qemu-user 7.2 (bookworm) shows the x86
host's /proc/cpuinfo, on which `import onnxruntime` segfaults: the root gets a Pi 4's instead,
and QEMU_CPU=cortex-a72.

Prints the two replies and a JSON summary (`--json` writes it to a file too); exits 1 when the
replies differ or a kernel test fails, 2 when this host cannot run the check.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = Path.home() / ".cache" / "edge" / "arm64-root"
DEFAULT_PACKAGE = Path.home() / ".cache" / "edge" / "packages" / "smollm2-135m"
SUITE = "bookworm"
# What running a package needs (pyproject's base dependencies); tests add the rest.
RUNTIME = ("numpy", "onnxruntime", "tokenizers", "jinja2", "psutil", "tqdm", "llvmlite")
TESTING = ("pytest", "hypothesis", "onnx")
SOURCES = ("edge", "devices", "exporters", "memory_sched", "quant", "examples", "tests")
SOURCE_FILES = ("pyproject.toml", "README.md")
VENV = "/opt/edge-venv"  # inside the root
SRC = "/opt/edge-src"
PACKAGE = "/opt/edge-package"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
ROOT_CA = "/etc/edge-host-ca.crt"  # inside the root
# QEMU_CPU: emulate a Pi 4's Cortex-A72 (NEON, no dotprod, no SVE), not qemu's "max" CPU.
ENV = {
    "PATH": f"{VENV}/bin:/usr/bin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "QEMU_CPU": "cortex-a72",
}
# qemu-user 7.2 shows the x86 host's /proc/cpuinfo: `import onnxruntime` segfaults on it (its
# CPU detection reads the file) and LLVM cannot name the CPU. A Pi 4's, one entry per core.
PI4_CORE = """processor\t: {n}
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

"""
PI4_BOARD = "Hardware\t: BCM2835\nRevision\t: c03111\nModel\t\t: Raspberry Pi 4 Model B Rev 1.1\n"
KERNEL_TESTS = ("tests/devices/kernels",)
# The x86 reference: the example as is, but the kernel multiplies in fp32 as on arm64.
X86_REFERENCE = """
import runpy, sys
import devices.kernels.nbits_matmul as nbits
nbits.int16_supported = lambda target=None: False
sys.path.insert(0, sys.argv[1])
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""
TARGET_PROBE = """
import platform
from devices.kernels import host_target
from devices.kernels.nbits_matmul import int16_supported
t = host_target()
print("machine", platform.machine(), "triple", t.triple, "cpu", t.cpu, "lanes", t.lanes,
      "registers", t.vector_registers, "int16", int16_supported(t))
"""


class Unavailable(RuntimeError):
    """This host cannot run the check (no qemu, no debootstrap, not root, no binfmt_misc)."""


def log(message: str) -> None:
    print(f"[arm64] {message}", flush=True)


def sh(cmd: Sequence[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a command, echoing it; raise with its output when it fails."""
    log("$ " + " ".join(str(c).strip().splitlines()[0] for c in cmd))
    result = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, check=False, **kwargs
    )  # type: ignore[call-overload]
    if result.returncode != 0:
        tail = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        raise RuntimeError(f"{cmd[0]} exited {result.returncode}:\n{tail}")
    return result


def check_host() -> None:
    """Raise `Unavailable` with the reason when this host cannot build or enter the root."""
    if sys.platform != "linux":
        raise Unavailable("needs Linux (debootstrap, chroot, binfmt_misc)")
    if os.geteuid() != 0:
        raise Unavailable("needs root (debootstrap, chroot, mount)")
    missing = [t for t in ("debootstrap", "qemu-aarch64-static", "chroot") if not shutil.which(t)]
    if missing:
        raise Unavailable(
            f"missing {', '.join(missing)}: apt-get install -y qemu-user-static debootstrap "
            "binfmt-support"
        )


def register_binfmt() -> None:
    """Let the kernel run aarch64 ELF files through qemu, so chroot and debootstrap just work."""
    binfmt = Path("/proc/sys/fs/binfmt_misc")
    if not (binfmt / "register").exists():
        try:
            sh(["mount", "-t", "binfmt_misc", "binfmt_misc", binfmt])
        except RuntimeError as exc:
            raise Unavailable(f"binfmt_misc cannot be mounted here: {exc}") from None
    entry = binfmt / "qemu-aarch64"
    if not entry.exists() and shutil.which("update-binfmts"):
        subprocess.run(["update-binfmts", "--enable", "qemu-aarch64"], check=False)
    if not entry.exists() or not entry.read_text().startswith("enabled"):
        raise Unavailable("no qemu-aarch64 binfmt_misc entry (install binfmt-support)")
    # Without the F flag the interpreter is looked up inside the root: put it there too.
    if "F" not in re.search(r"flags: *(\S*)", entry.read_text() + "flags: ").group(1):
        raise Unavailable("the qemu-aarch64 binfmt entry lacks the F (fix binary) flag")


def debian_mirror() -> str:
    """The Debian mirror apt on this host already uses (it is reachable), else the CDN."""
    for path in [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]:
        text = path.read_text() if path.is_file() else ""
        for url in re.findall(r"(https?://\S+/debian)(?:\s|$)", text):
            return url
    return "http://deb.debian.org/debian"


def bootstrap(root: Path) -> None:
    """A minimal Debian arm64 root with python3, venv and pip; built once, then reused."""
    if (root / ".edge-bootstrapped").exists():
        return
    scratch = root.with_name(root.name + ".tmp")
    shutil.rmtree(scratch, ignore_errors=True)
    packages = "python3,python3-venv,python3-pip,ca-certificates"
    started = time.monotonic()
    sh(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={packages}", SUITE,
        scratch, debian_mirror()])  # fmt: skip
    (scratch / ".edge-bootstrapped").write_text(SUITE + "\n")
    shutil.rmtree(root, ignore_errors=True)
    scratch.rename(root)
    log(f"debootstrap: {time.monotonic() - started:.0f} s")


@contextmanager
def mounted(root: Path) -> Iterator[None]:
    """/proc, /sys and /dev inside the root while it runs (psutil and ONNX Runtime read them)."""
    shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
    # The host's CA bundle: where HTTPS goes through a proxy with its own CA, pip needs it.
    if Path(HOST_CA).is_file():
        shutil.copy2(HOST_CA, root / ROOT_CA.lstrip("/"))
    cpuinfo = root / "etc" / "edge-pi4-cpuinfo"
    cores = os.cpu_count() or 1
    cpuinfo.write_text("".join(PI4_CORE.format(n=n) for n in range(cores)) + PI4_BOARD)
    done: list[Path] = []
    try:
        for source, kind in (("/proc", "proc"), ("/sys", "sysfs"), ("/dev", None)):
            target = root / source.lstrip("/")
            if os.path.ismount(target):
                continue
            if kind is None:
                sh(["mount", "--rbind", source, target])
            else:
                sh(["mount", "-t", kind, kind, target])
            done.append(target)
        sh(["mount", "--bind", cpuinfo, root / "proc" / "cpuinfo"])
        done.append(root / "proc" / "cpuinfo")
        yield
    finally:
        for target in reversed(done):
            subprocess.run(["umount", "-R", "-l", str(target)], check=False)


def in_root(root: Path, *cmd: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run `cmd` inside the arm64 root (every binary through qemu-aarch64)."""
    env = {**ENV, "PIP_CERT": ROOT_CA} if (root / ROOT_CA.lstrip("/")).exists() else ENV
    return sh([shutil.which("chroot") or "chroot", root, *cmd], env=env, timeout=timeout)


def pins(names: Sequence[str], pin: bool) -> list[str]:
    """Requirements at this host's installed versions, so both sides run the same releases."""
    out = []
    for name in names:
        try:
            out.append(f"{name}=={metadata.version(name)}" if pin else name)
        except metadata.PackageNotFoundError:
            out.append(name)
    return out


def install(root: Path, requirements: list[str]) -> None:
    """The venv with the runtime's wheels (built once per requirement set), then edge itself
    from this tree's current sources with `pip install --no-deps`."""
    stamp = root / VENV.lstrip("/") / ".edge-requirements"
    wanted = "\n".join(requirements)
    if not stamp.exists() or stamp.read_text() != wanted:
        if not (root / VENV.lstrip("/") / "bin" / "python").exists():
            in_root(root, "/usr/bin/python3", "-m", "venv", VENV)
        in_root(root, "pip", "install", "--upgrade", "pip", "setuptools>=69", "wheel")
        in_root(root, "pip", "install", "--only-binary=:all:", *requirements)
        stamp.write_text(wanted)
    src = root / SRC.lstrip("/")
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", "*.egg-info")
    for name in SOURCES:
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in SOURCE_FILES:
        shutil.copy2(REPO / name, src / name)
    in_root(root, "pip", "install", "--no-deps", "--no-build-isolation", SRC)


def copy_package(root: Path, package: Path) -> None:
    target = root / PACKAGE.lstrip("/")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(package, target)


REPLY = re.compile(r"^edge> (.*?)\n\s+\((\d+) tokens, ([\d.]+) tok/s\)", re.S | re.M)


def reply(output: str) -> dict[str, object]:
    """The example's reply, token count and speed, and whether the plan streamed (the JIT
    kernel only runs for streamed parts; a resident plan is ONNX Runtime's MatMulNBits)."""
    match = REPLY.search(output)
    if match is None:
        raise RuntimeError(f"no reply in the example's output:\n{output[-4000:]}")
    return {
        "text": match.group(1),
        "tokens": int(match.group(2)),
        "tok_s": float(match.group(3)),
        "streamed": "plan: streamed" in output,
    }


def example_args(package: str, args: argparse.Namespace) -> list[str]:
    return [package, "--budget", args.budget, "--max-tokens", str(args.max_tokens),
            "--prompt", args.prompt, "--board", "pi4"]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    options = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    options.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="the arm64 root's cache")
    options.add_argument("--package", type=Path, default=DEFAULT_PACKAGE, help="an edge package")
    options.add_argument(
        "--budget",
        default="460MB",
        help="streamed on both sides, so the JIT kernel runs (460MB = 438.7 MiB: x86 goes "
        "resident from ~458 MiB; qemu's own memory lifts arm64's streamed minimum to ~425 MiB)",
    )
    options.add_argument("--max-tokens", type=int, default=24)
    options.add_argument("--prompt", default="Why is the sky blue?")
    options.add_argument("--kernel-tests", action="store_true", help="run the JIT kernel tests")
    options.add_argument("--no-pin", action="store_true", help="latest wheels, not this host's")
    options.add_argument("--json", type=Path, default=None, help="write the summary here too")
    args = options.parse_args(argv)
    started = time.monotonic()
    summary: dict[str, object] = {}
    try:
        check_host()
        register_binfmt()
    except Unavailable as exc:
        print(f"unavailable: {exc}", file=sys.stderr)
        return 2
    if not (args.package / "manifest.json").exists():
        raise SystemExit(f"not an edge package: {args.package} (edge export smollm2-135m -o DIR)")

    log("x86 reference (fp32 kernel activations)")
    t = time.monotonic()
    x86 = sh([sys.executable, "-c", X86_REFERENCE, str(REPO / "examples"),
              str(REPO / "examples" / "raspberry_pi.py"), *example_args(str(args.package), args)],
             cwd=REPO)  # fmt: skip
    summary["x86"] = {**reply(x86.stdout), "wall_s": round(time.monotonic() - t, 1)}

    t = time.monotonic()
    bootstrap(args.root)
    summary["bootstrap_s"] = round(time.monotonic() - t, 1)
    with mounted(args.root):
        t = time.monotonic()
        requirements = pins(RUNTIME, not args.no_pin)
        if args.kernel_tests:
            requirements += pins(TESTING, not args.no_pin)
        install(args.root, requirements)
        copy_package(args.root, args.package)
        summary["install_s"] = round(time.monotonic() - t, 1)
        summary["requirements"] = requirements
        probe = in_root(args.root, "python", "-c", TARGET_PROBE)
        summary["arm64_target"] = probe.stdout.strip()
        log(probe.stdout.strip())

        t = time.monotonic()
        arm = in_root(args.root, "python", f"{SRC}/examples/raspberry_pi.py",
                      *example_args(PACKAGE, args))  # fmt: skip
        summary["arm64"] = {**reply(arm.stdout), "wall_s": round(time.monotonic() - t, 1)}
        summary["arm64_output"] = arm.stdout[-3000:]

        if args.kernel_tests:
            t = time.monotonic()
            tests = subprocess.run(
                [shutil.which("chroot") or "chroot", str(args.root), "sh", "-c",
                 f"cd {SRC} && python -m pytest -q -p no:cacheprovider {' '.join(KERNEL_TESTS)}"],
                capture_output=True, text=True, check=False,
                env=ENV,
            )  # fmt: skip
            lines = (tests.stdout + tests.stderr).strip().splitlines()
            summary["kernel_tests"] = {
                "passed": tests.returncode == 0,
                "summary": lines[-1] if lines else "",
                "wall_s": round(time.monotonic() - t, 1),
            }
            if tests.returncode != 0:
                summary["kernel_tests_output"] = "\n".join(lines[-60:])

    x86_text, arm_text = summary["x86"]["text"], summary["arm64"]["text"]  # type: ignore[index]
    summary["equal"] = x86_text == arm_text
    summary["wall_s"] = round(time.monotonic() - started, 1)
    print(f"x86   reply: {x86_text!r}")
    print(f"arm64 reply: {arm_text!r}")
    print(json.dumps(summary, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    kernels_ok = summary.get("kernel_tests", {"passed": True})["passed"]  # type: ignore[index]
    return 0 if summary["equal"] and kernels_ok else 1


if __name__ == "__main__":
    sys.exit(main())
