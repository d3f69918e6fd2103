"""Device discovery on this machine (real) and on faked file trees of boards we do not have.

The fakes (a Raspberry Pi 5's and a Jetson Orin Nano's /proc/device-tree, an Intel NPU's
/dev/accel node, nvidia-smi's answer, cgroup files) stand for hardware that cannot exist on the
machine running the tests: the boundary is the file tree and the probes' answers, which are
copied from real devices' formats. The probes that ask this interpreter (onnxruntime, openvino,
nvidia-smi, pyserial) are replaced in those tests so that the host cannot leak in.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from devices import boards, gpus, npus
from devices.cgroups import cpu_quota, memory_limit
from devices.cpu_info import parse_cpuinfo
from devices.discovery import discover
from devices.memory_info import MemoryInfo
from devices.npus import OpenVinoDevice, OpenVinoInfo, OrtInfo

PI5_FEATURES = (
    "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
    "lrcpc dcpop asimddp"
)
PI5_CORE = (
    """processor\t: {i}
BogoMIPS\t: 108.00
Features\t: """
    + PI5_FEATURES
    + """
CPU implementer\t: 0x41
CPU architecture: 8
CPU part\t: 0xd0b

"""
)
PI5_TAIL = "Revision\t: d04170\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n"
ORIN_CORE = PI5_CORE.replace("0xd0b", "0xd42").replace("dcpop asimddp", "dcpop asimddp uscat")
MEMINFO_8G = (
    "MemTotal:        8245616 kB\nMemFree:         6000000 kB\nMemAvailable:    7000000 kB\n"
)
NVIDIA_SMI = "0, NVIDIA GeForce RTX 4090, 24564, 23000, 550.54.14\n"


def write(root: Path, rel: str, content: str | bytes) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


def fake_pi5(root: Path) -> Path:
    write(root, "proc/cpuinfo", "".join(PI5_CORE.format(i=i) for i in range(4)) + PI5_TAIL)
    write(root, "proc/meminfo", MEMINFO_8G)
    write(root, "proc/device-tree/model", b"Raspberry Pi 5 Model B Rev 1.0\x00")
    write(root, "proc/device-tree/compatible", b"raspberrypi,5-model-b\x00brcm,bcm2712\x00")
    return root


def fake_orin_nano(root: Path) -> Path:
    write(root, "proc/cpuinfo", "".join(ORIN_CORE.format(i=i) for i in range(6)))
    write(root, "proc/meminfo", "MemTotal:        7805952 kB\nMemAvailable:    6100000 kB\n")
    write(root, "proc/device-tree/model", b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    write(
        root,
        "proc/device-tree/compatible",
        b"nvidia,p3768-0000+p3767-0005\x00nvidia,p3767-0005\x00nvidia,tegra234\x00",
    )
    write(
        root,
        "etc/nv_tegra_release",
        "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64\n",
    )
    return root


def fake_x86(root: Path, model: str = "Intel(R) Core(TM) Ultra 7 155H") -> Path:
    flags = "fpu sse sse2 avx avx2 fma f16c avx_vnni"
    write(
        root,
        "proc/cpuinfo",
        "".join(
            f"processor\t: {i}\nmodel name\t: {model}\nphysical id\t: 0\ncore id\t\t: {i // 2}\n"
            f"flags\t\t: {flags}\n\n"
            for i in range(4)
        ),
    )
    write(root, "proc/meminfo", MEMINFO_8G)
    return root


@pytest.fixture
def hermetic(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the probes that ask this interpreter: a CPU-only onnxruntime, no openvino, no
    nvidia-smi, no serial ports."""
    cpu_only = OrtInfo("1.32.0", ("CPUExecutionProvider",))
    monkeypatch.setattr(npus, "read_onnxruntime", lambda: cpu_only)
    monkeypatch.setattr(npus, "read_openvino", lambda: None)
    monkeypatch.setattr(gpus, "query_nvidia_smi", lambda timeout_s=10.0: None)
    monkeypatch.setattr(boards, "serial_ports", lambda: ())


def test_discovery_real_machine_matches_proc_cpuinfo_and_onnxruntime() -> None:
    """On the machine running the tests: the ISA agrees with /proc/cpuinfo (avx512f on the dev
    VM), no GPU without nvidia-smi, onnxruntime's CPU provider, and JSON round-trips."""
    import onnxruntime

    machine = discover()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        flags = parse_cpuinfo(cpuinfo.read_text())[0].get("flags", "").split()
        assert machine.cpu.has("avx512f") == ("avx512f" in flags)
        assert machine.cpu.has("avx2") == ("avx2" in flags)
    if shutil.which("nvidia-smi") is None and not Path("/sys/class/drm").exists():
        assert machine.gpus == ()
    assert "CPUExecutionProvider" in machine.onnxruntime.providers
    assert machine.onnxruntime.version == onnxruntime.__version__
    assert 1 <= machine.cpu.usable_cores <= machine.cpu.logical_cores
    assert 0 < machine.memory.budget <= machine.memory.total
    assert machine.torch is None  # not probed unless asked
    data = json.loads(json.dumps(machine.to_dict()))
    assert data["cpu"]["model"] == machine.cpu.model
    assert data["memory"]["budget"] == machine.memory.budget


def test_discovery_llvm_cross_check_agrees_on_this_host() -> None:
    """LLVM's CPUID-based view and the kernel's flags agree on the features edge uses here."""
    machine = discover()
    if machine.cpu.llvm_features is None:
        pytest.skip("llvmlite could not name the host CPU")
    assert machine.cpu.disagreements == ()


def test_discovery_fake_pi5(tmp_path: Path, hermetic: None) -> None:
    machine = discover(fake_pi5(tmp_path))
    assert machine.board is not None
    assert machine.board.model == "Raspberry Pi 5 Model B Rev 1.0"
    assert machine.board.family == "raspberry-pi"
    assert machine.board.compatible == ("raspberrypi,5-model-b", "brcm,bcm2712")
    assert machine.cpu.model == "Raspberry Pi 5 Model B Rev 1.0"
    assert (machine.cpu.physical_cores, machine.cpu.logical_cores) == (4, 4)
    assert machine.cpu.features == ("dotprod", "fp16", "neon")
    assert machine.cpu.arch == "aarch64"
    assert machine.memory.total == 8245616 * 1024
    assert machine.memory.available == 7000000 * 1024
    assert machine.gpus == () and machine.npus == ()
    assert machine.jetson_release is None
    assert machine.hints == ()


def test_discovery_fake_jetson_without_cuda_provider(tmp_path: Path, hermetic: None) -> None:
    """Jetson: the integrated GPU shares system RAM; with CPU-only onnxruntime the hint points
    to the JetPack wheel, not PyPI's onnxruntime-gpu."""
    machine = discover(fake_orin_nano(tmp_path))
    assert machine.is_jetson
    assert machine.jetson_release.startswith("R36 (release), REVISION: 4.0")
    assert machine.board.family == "jetson"
    assert machine.cpu.logical_cores == 6
    (gpu,) = machine.gpus
    assert gpu.unified_memory and gpu.vendor == "nvidia"
    assert gpu.memory_total == machine.memory.total
    assert gpu.usable_via == ()
    (hint,) = machine.hints
    assert "JetPack" in hint.install and "CUDAExecutionProvider" in hint.reason


def test_discovery_jetson_with_cuda_provider_needs_no_hint(
    tmp_path: Path, hermetic: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    providers = ("CUDAExecutionProvider", "CPUExecutionProvider")
    monkeypatch.setattr(npus, "read_onnxruntime", lambda: OrtInfo("1.20.0", providers))
    machine = discover(fake_orin_nano(tmp_path))
    assert machine.gpus[0].usable_via == ("onnxruntime:CUDAExecutionProvider",)
    assert machine.hints == ()


def test_discovery_nvidia_smi_gpu_without_cuda_provider(
    tmp_path: Path, hermetic: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A discrete card nvidia-smi sees, CPU-only onnxruntime -> "pip install onnxruntime-gpu"."""
    monkeypatch.setattr(gpus, "query_nvidia_smi", lambda timeout_s=10.0: NVIDIA_SMI)
    machine = discover(fake_x86(tmp_path))
    (gpu,) = machine.gpus
    assert gpu.name == "NVIDIA GeForce RTX 4090"
    assert gpu.memory_total == 24564 << 20 and gpu.memory_free == 23000 << 20
    assert not gpu.unified_memory
    (hint,) = machine.hints
    assert hint.install.endswith("pip install onnxruntime-gpu")
    assert "RTX 4090" in hint.reason


def test_discovery_parse_nvidia_smi_handles_na_and_noise() -> None:
    text = (
        "0, Orin (nvgpu), [N/A], [N/A], 540.4.0\nNo devices were found\n"
        "1, H100, 81559, 80000, [N/A]\n"
    )
    first, second = gpus.parse_nvidia_smi(text)
    assert (first.name, first.memory_total, first.memory_free) == ("Orin (nvgpu)", None, None)
    assert second.memory_total == 81559 << 20 and second.driver is None


def test_discovery_intel_npu_without_openvino(tmp_path: Path, hermetic: None) -> None:
    """/dev/accel/accel0 of an Intel NPU and no openvino -> "pip install openvino"."""
    root = fake_x86(tmp_path)
    write(root, "dev/accel/accel0", "")
    write(root, "sys/class/accel/accel0/device/vendor", "0x8086\n")
    machine = discover(root)
    (npu,) = machine.npus
    assert (npu.name, npu.usable_via) == ("Intel NPU", ())
    (hint,) = machine.hints
    assert hint.install == "pip install openvino"


def test_discovery_intel_npu_and_gpu_through_openvino(
    tmp_path: Path, hermetic: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OpenVINO listing NPU and GPU makes both usable, and no hint is left."""
    root = fake_x86(tmp_path)
    write(root, "dev/accel/accel0", "")
    write(root, "sys/class/drm/renderD128/device/vendor", "0x8086\n")
    devices = (
        OpenVinoDevice("CPU", "Intel(R) Core(TM) Ultra 7 155H"),
        OpenVinoDevice("GPU", "Intel(R) Arc(TM) Graphics (iGPU)"),
        OpenVinoDevice("NPU", "Intel(R) AI Boost"),
    )
    monkeypatch.setattr(npus, "read_openvino", lambda: OpenVinoInfo("2026.4.1", devices))
    machine = discover(root)
    assert machine.npus[0].usable_via == ("openvino:NPU",)
    (gpu,) = machine.gpus
    assert gpu.vendor == "intel" and gpu.usable_via == ("openvino:GPU",)
    assert machine.hints == ()


def test_discovery_snapdragon_without_qnn(tmp_path: Path, hermetic: None) -> None:
    root = fake_pi5(tmp_path)
    write(root, "proc/device-tree/model", b"Qualcomm Technologies, Inc. SM8650 QRD\x00")
    write(root, "proc/device-tree/compatible", b"qcom,sm8650-qrd\x00qcom,sm8650\x00")
    machine = discover(root)
    assert machine.board.family == "qualcomm"
    (npu,) = machine.npus
    assert npu.name == "Qualcomm Hexagon NPU" and npu.usable_via == ()
    (hint,) = machine.hints
    assert hint.install == "pip install onnxruntime-qnn"


def test_discovery_missing_files(tmp_path: Path, hermetic: None) -> None:
    """No device tree, no cgroup, no Jetson release: nothing invented. A faked root without
    /proc/meminfo is an error rather than silently describing the host's RAM."""
    write(tmp_path, "proc/meminfo", MEMINFO_8G)
    machine = discover(tmp_path)
    assert machine.board is None and machine.jetson_release is None
    assert machine.gpus == () and machine.npus == ()
    assert machine.cpu.features == () and machine.cpu.logical_cores == 1
    assert machine.memory.cgroup_limit is None
    (tmp_path / "proc/meminfo").unlink()
    with pytest.raises(FileNotFoundError, match="meminfo"):
        discover(tmp_path)


def test_discovery_cgroup_v1_limit_is_the_budget(tmp_path: Path, hermetic: None) -> None:
    """Docker on cgroup v1: the process's own cgroup holds a 2 GiB limit with 0.5 GiB used."""
    root = fake_pi5(tmp_path)
    write(root, "proc/self/cgroup", "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n")
    write(root, "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", str(2 << 30))
    write(root, "sys/fs/cgroup/memory/docker/abc/memory.usage_in_bytes", str(512 << 20))
    write(root, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    machine = discover(root)
    assert machine.memory.cgroup_limit == 2 << 30
    assert machine.memory.budget == (2 << 30) - (512 << 20)


def test_discovery_cgroup_v2_limits(tmp_path: Path) -> None:
    write(tmp_path, "proc/self/cgroup", "0::/user.slice/app\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", "max\n")
    write(tmp_path, "sys/fs/cgroup/user.slice/memory.max", str(4 << 30))
    write(tmp_path, "sys/fs/cgroup/user.slice/memory.current", str(1 << 30))
    write(tmp_path, "sys/fs/cgroup/user.slice/app/memory.max", str(6 << 30))
    write(tmp_path, "sys/fs/cgroup/user.slice/app/cpu.max", "150000 100000\n")
    assert memory_limit(tmp_path) == (4 << 30, 1 << 30)  # the tighter parent wins
    assert cpu_quota(tmp_path) == 1.5
    assert memory_limit(tmp_path / "nothing") == (None, None)


def test_discovery_memory_info_validates() -> None:
    with pytest.raises(ValueError, match="available"):
        MemoryInfo(total=100, available=200)
    assert MemoryInfo(100, 80, cgroup_limit=50, cgroup_usage=40).budget == 10
