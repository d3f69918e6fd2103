"""Built-in device profiles are valid, conservative and findable by name; bad values are refused
with errors that name them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from devices.profiles import (
    BUILTIN,
    PLATFORMS,
    PROFILES,
    DeviceProfile,
    DeviceProfileError,
    platform_by_name,
    profile_by_name,
    profiles_json,
    read_profile_file,
)
from edge.errors import EdgeError

GB = 10**9


def valid(**changes: object) -> DeviceProfile:
    base = dict(
        name="x",
        kind="cpu",
        memory_bytes=GB,
        memory_bandwidth_gbs=10.0,
        fp32_gflops=50.0,
        int8_gops=100.0,
        cores=4,
        source="published spec: test",
    )
    return DeviceProfile(**{**base, **changes})  # type: ignore[arg-type]


def test_profiles_builtin_names_and_sources() -> None:
    assert set(PROFILES) >= {
        "pi4",
        "pi5",
        "jetson-orin-nano-gpu",
        "snapdragon-8-gen-3-npu",
        "laptop-x86",
    }
    for profile in BUILTIN:
        assert profile.source.startswith("published spec: "), profile.name
        # the document it cites, not the prefix alone
        assert len(profile.source.removeprefix("published spec: ")) > 40, profile.name
        assert profile_by_name(profile.name) is profile


def test_profiles_builtin_numbers_stay_below_published_peaks() -> None:
    """Effective, not peak: each bandwidth under its DRAM's datasheet figure."""
    peaks = {
        "pi4": 12.8,
        "pi5": 17.1,
        "jetson-orin-nano-cpu": 68.0,
        "jetson-orin-nano-gpu": 68.0,
        "snapdragon-8-gen-3-cpu": 77.0,
        "snapdragon-8-gen-3-gpu": 77.0,
        "snapdragon-8-gen-3-npu": 77.0,
        "laptop-x86": 89.6,
        "core-ultra-7-155h-cpu": 119.5,  # LPDDR5X-7467 x 128 bits
        "core-ultra-7-155h-gpu": 119.5,
        "core-ultra-7-155h-npu": 119.5,
    }
    for name, peak in peaks.items():
        assert profile_by_name(name).memory_bandwidth_gbs < peak, name
    assert profile_by_name("pi4").memory_bytes < 4 * 2**30
    assert profile_by_name("snapdragon-8-gen-3-cpu").memory_bytes <= 5 * GB  # app's share


def test_profiles_platforms_share_one_memory_pool() -> None:
    jetson = platform_by_name("jetson-orin-nano")
    assert [p.kind for p in jetson] == ["cpu", "gpu"]
    assert {p.memory_pool for p in jetson} == {"jetson-orin-nano"}
    assert jetson[1].unified_memory and jetson[1].host_link_gbs is None
    phone = platform_by_name("snapdragon-8-gen-3")
    npu = phone[2]
    assert npu.kind == "npu" and npu.needs_static_shapes and npu.needs_int8
    assert npu.fp32_gflops == 0
    assert len({p.memory_pool for p in phone}) == 1
    laptop = platform_by_name("core-ultra-7-155h")
    assert [p.kind for p in laptop] == ["cpu", "gpu", "npu"]
    assert len({p.memory_pool for p in laptop}) == 1
    assert laptop[2].needs_static_shapes and laptop[2].needs_int8 and laptop[2].fp32_gflops == 0
    assert laptop[2].int8_gops < 11_000 and laptop[1].fp32_gflops < 4_600  # ARK's peaks
    assert profile_by_name("pi5").memory_pool == "pi5"  # defaults to its own name
    for name, members in PLATFORMS.items():
        assert len(platform_by_name(name)) == len(members)


def test_profiles_efficiency_defaults_by_kind() -> None:
    assert valid().efficiency == 0.8
    assert valid(kind="gpu", host_link_gbs=25.0).efficiency == 0.6
    assert valid(kind="npu", efficiency=0.3).efficiency == 0.3


def test_profiles_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(DeviceProfileError, match=r"'pi9'.*laptop-x86.*pi4.*pi5") as info:
        profile_by_name("pi9")
    assert isinstance(info.value, EdgeError) and isinstance(info.value, ValueError)
    with pytest.raises(DeviceProfileError, match=r"known platforms: .*jetson-orin-nano"):
        platform_by_name("jetson-agx-thor")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "tpu"}, "kind must be one of"),
        ({"memory_bytes": 0}, "memory_bytes must be > 0, got 0"),
        ({"memory_bandwidth_gbs": -1.0}, "memory_bandwidth_gbs must be > 0"),
        ({"fp32_gflops": 0.0}, "fp32_gflops must be > 0"),
        ({"cores": 0}, "cores must be > 0"),
        ({"efficiency": 1.5}, r"efficiency must be in \(0, 1\], got 1.5"),
        ({"host_link_gbs": 16.0}, "a cpu has no host link"),
        ({"source": "somebody said"}, "source must start with"),
        ({"name": ""}, "name must be a non-empty"),
    ],
)
def test_profiles_validation_names_the_bad_value(change: dict, message: str) -> None:
    with pytest.raises(DeviceProfileError, match=message):
        valid(**change)


def test_profiles_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        profile_by_name("pi5").cores = 8  # type: ignore[misc]


def test_profile_file_round_trip(tmp_path: Path) -> None:
    """What `edge devices --save-profile` writes reads back the same, a platform included."""
    jetson = platform_by_name("jetson-orin-nano")
    path = tmp_path / "jetson.json"
    path.write_text(profiles_json(jetson))
    assert read_profile_file(path) == jetson
    assert json.loads(path.read_text())["edge_device_profiles"] == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "cannot read the profile file"),
        ("[1, 2]", "is not an edge device profile file"),
        ('{"edge_device_profiles": 2, "profiles": []}', "is not an edge device profile file"),
        ('{"edge_device_profiles": 1, "profiles": []}', "needs profiles with distinct names"),
        ('{"edge_device_profiles": 1, "profiles": [{"name": "x", "speed": 1}]}', "'speed'"),
        ('{"edge_device_profiles": 1, "profiles": [{"name": "x"}]}', "missing"),
        ('{"edge_device_profiles": 1, "profiles": [7]}', "not an object"),
    ],
)
def test_profile_file_refusals_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "p.json"
    path.write_text(text)
    with pytest.raises(DeviceProfileError, match=message):
        read_profile_file(path)
    with pytest.raises(DeviceProfileError, match="cannot read the profile file"):
        read_profile_file(tmp_path / "missing.json")


def test_profile_file_values_are_checked_like_builtin_ones(tmp_path: Path) -> None:
    """A shared file is somebody's claim: the same checks as a built-in profile, and two
    devices of one name are refused."""
    entry = {**dataclasses.asdict(valid()), "source": "somebody said"}
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"edge_device_profiles": 1, "profiles": [entry]}))
    with pytest.raises(DeviceProfileError, match="source must start with"):
        read_profile_file(path)
    path.write_text(profiles_json([valid(), valid()]))
    with pytest.raises(DeviceProfileError, match="distinct names"):
        read_profile_file(path)
