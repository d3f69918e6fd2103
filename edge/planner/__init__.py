"""The planner: which device runs which parts, resident or streamed, and what it will cost.

A pure function of the package's manifest, the devices (a `DeviceProfile`, a backend name and a
memory budget each) and a `PlanConfig`; `edge plan MODEL` prints its answer. Modules: `costs`
(what each part costs, from the manifest), `memory` (what each runtime keeps of it, measured),
`timing` (a roofline per device), `tables`/`search` (every contiguous split, priced), `stream`
(plans for budgets nothing resident fits), `reasons` (why parts fell back), `make` (the entry
points), `plan` (the data).

>>> from edge.planner import make_plan, PlanConfig
>>> from devices.profiles import profile_by_name
>>> plan = make_plan(manifest, [(profile_by_name("pi5"), "ort_cpu", None)])  # doctest: +SKIP
>>> print(render(plan))  # doctest: +SKIP
"""

from edge.planner.make import evaluate, make_plan
from edge.planner.plan import (
    Device,
    DeviceUse,
    PartFallback,
    Plan,
    PlanConfig,
    SegmentPlan,
    StoredPacking,
    Streaming,
    Transfer,
)
from edge.planner.stream import stream_minimum

__all__ = [
    "Device",
    "DeviceUse",
    "PartFallback",
    "Plan",
    "PlanConfig",
    "SegmentPlan",
    "StoredPacking",
    "Streaming",
    "Transfer",
    "evaluate",
    "make_plan",
    "stream_minimum",
]
