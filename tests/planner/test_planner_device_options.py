"""A backend that drives several devices (OpenVINO: CPU, GPU, NPU) is asked about each as its
`Device` configures it, and a what-if plan does not hold a device's absence here against it."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import ClassVar

import pytest

from devices import registry
from devices.backend import YES, Support
from devices.backends.numpy_reference import NumpyBackend
from devices.profiles import profile_by_name
from edge.planner import Device, PlanConfig, make_plan
from edge.planner.machine import backend_refusals


class TwoDevices(NumpyBackend):
    """Sees device "A" only; "A" refuses blocks, an absent device answers "no X here"."""

    name: ClassVar[str] = "test_two_devices"
    OPTIONS: ClassVar = {**NumpyBackend.OPTIONS, "device": str}

    def is_available(self) -> Support:
        device = self.options.get("device")
        return YES if device == "A" else Support(False, f"no {device} here")

    def supports(self, part, package) -> Support:  # type: ignore[no-untyped-def]
        available = self.is_available()
        if not available:
            return available
        return Support(False, "A cannot run blocks") if part.kind == "block" else YES


@pytest.fixture
def two_devices() -> Iterator[tuple[Device, Device]]:
    registry.register(TwoDevices)
    try:
        yield (
            Device(
                profile_by_name("core-ultra-7-155h-gpu"), TwoDevices.name, None, {"device": "A"}
            ),
            Device(
                profile_by_name("core-ultra-7-155h-npu"), TwoDevices.name, None, {"device": "B"}
            ),
        )
    finally:
        registry.unregister(TwoDevices.name)


def _package(kinds: list[str]) -> SimpleNamespace:
    """What backend_refusals reads of a package: its parts' kinds."""
    return SimpleNamespace(manifest=SimpleNamespace(parts=[SimpleNamespace(kind=k) for k in kinds]))


def test_each_device_answers_for_itself(two_devices: tuple[Device, Device]) -> None:
    a, b = two_devices
    package = _package(["embed", "block", "block", "head"])
    what_if = backend_refusals(package, [a, b], local=False)  # type: ignore[arg-type]
    assert what_if == {(a.label, 1): "A cannot run blocks", (a.label, 2): "A cannot run blocks"}
    here = backend_refusals(package, [a, b], local=True)  # type: ignore[arg-type]
    assert {k: v for k, v in here.items() if k[0] == b.label} == {
        (b.label, i): "no B here" for i in range(4)
    }
    assert here[(a.label, 1)] == "A cannot run blocks" and (a.label, 0) not in here


def test_the_plan_keeps_each_refusal_to_its_device(
    two_devices: tuple[Device, Device], manifest_factory
) -> None:
    """Keyed by label: A's refusal of the blocks does not keep them off B (the NPU), which
    takes the prompt (keyed by the backend's name, it would not)."""
    a, b = two_devices
    manifest = manifest_factory(layers=4, hidden=1024, ffn=4096, quant="static")
    cpu = Device(profile_by_name("core-ultra-7-155h-cpu"), "ort_cpu")
    refusals = {(a.label, i): "A cannot run blocks" for i in range(1, 5)}
    plan = make_plan(manifest, [cpu, a, b], PlanConfig(max_context=256), refusals)
    reasons = [f for f in plan.fallbacks if "A cannot run blocks" in f.reason]
    assert reasons and all(f.device == a.label for f in reasons)
    assert any(s.device == b.label for s in plan.prefill), plan.prefill
