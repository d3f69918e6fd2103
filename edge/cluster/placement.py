"""The coordinator's split of a model over the paired workers it finds: pipeline parallel
(contiguous ranges of parts) or tensor parallel (every block sharded), chosen from measured
numbers.

Each way to run is predicted per decoded token (`edge.cluster.predict`) over each subset of the
workers found (`edge.cluster.members`), with every device's peak memory
(`edge.cluster.memory_plan`). By default (`mode="auto"`) the fastest feasible prediction wins,
and a model that fits here is not distributed unless a split is predicted faster; the reason
says which, by how much, and which workers were left out.

>>> config = ClusterConfig("home", peers=("192.168.1.20:5570",))
>>> placement, why = cluster_placement(package, config)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from edge.cluster.members import Member, find_members
from edge.cluster.memory_plan import memory_context, with_memory
from edge.cluster.predict import (
    Device,
    Prediction,
    device_subsets,
    predict_pipeline,
    predict_single,
    predict_tensor,
)
from edge.errors import ConfigError
from edge.package import Package
from edge.placement import DEFAULT_BACKEND, Placement
from edge.planner.memory import DEFAULT_FOOTPRINT
from edge.planner.plan import PlanConfig

DISTRIBUTE = ("auto", "always")
MODES = ("auto", "pipeline", "tensor")
# Of the memory a device reports available, the share its slice may take: the runtime, the
# KV cache and the page cache need the rest.
MEMORY_SHARE = 0.7
MEMORY_CHECKS = 8  # fastest subsets whose per-device memory is checked, at most


@dataclass(frozen=True)
class ClusterConfig:
    """`name`: the cluster (keys from `edge cluster init`); `peers`: explicit HOST:PORT of
    workers, tried besides mDNS for `mdns_s` seconds; `distribute`: "auto" (only where a split
    is predicted faster, or the model does not fit here, and only over the workers that make
    it faster: a slow link or board is left out) or "always" (over every worker found, even
    where fewer would be faster); `mode`: "auto" (the
    faster prediction), "pipeline" or "tensor"; `local_share`: this machine computes a share
    too (pipeline; a tensor split always keeps one here); `send`: a worker waiting for a
    package (`edge cluster serve PKG --receive`) is sent this one first (a progress bar
    when `progress`); `interfaces`: browse mDNS on these (default: every interface but
    loopback and virtual bridges)."""

    name: str
    peers: tuple[str, ...] = ()
    mdns_s: float = 2.0
    interfaces: tuple[str, ...] = ()
    distribute: str = "auto"
    mode: str = "auto"
    local_share: bool = True
    send: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        if self.distribute not in DISTRIBUTE:
            raise ConfigError(f"distribute={self.distribute!r}; one of {DISTRIBUTE}")
        if self.mode not in MODES:
            raise ConfigError(f"mode={self.mode!r}; one of {MODES}")
        if self.mdns_s < 0:
            raise ConfigError(f"mdns_s={self.mdns_s}; must be >= 0")
        object.__setattr__(self, "peers", tuple(self.peers))
        object.__setattr__(self, "interfaces", tuple(self.interfaces))


def _devices(
    config: ClusterConfig, members: Sequence[Member], bandwidth_here: float
) -> list[Device]:
    from devices.memory_info import read_memory

    available = read_memory().available
    here = Device(
        DEFAULT_BACKEND, (), int(available * MEMORY_SHARE), bandwidth_here, available=available
    )
    out = [here]
    for m in members:
        options = (("cluster", config.name), ("endpoint", m.endpoint), ("server_key", m.public))
        bandwidth = 1e9 * m.bandwidth_gbs if m.bandwidth_gbs else bandwidth_here
        out.append(
            Device(
                "cluster",
                options,
                int(m.memory * MEMORY_SHARE),
                bandwidth,
                m.rtt_s,
                m.node_id,
                m.memory,
                m.idle_rss,
                m.runtimes,
                m.link_bps,
            )
        )
    return out


@dataclass(frozen=True)
class ClusterPlan:
    """Every mode's prediction (time per token, each device's peak memory), the chosen one
    (None: run on this machine alone) and why."""

    single: Prediction | None
    candidates: tuple[Prediction, ...]
    chosen: Prediction | None
    why: str

    @property
    def placement(self) -> Placement | None:
        return None if self.chosen is None else self.chosen.placement

    def prediction(self, mode: str) -> Prediction:
        found = [c for c in self.candidates if c.mode == mode]
        if not found:
            raise ConfigError(f"no {mode} prediction (modes: {[c.mode for c in self.candidates]})")
        return found[0]


def _best_subset(
    predict: Callable[[Sequence[Device]], Prediction | None],
    devices: Sequence[Device],
    subsets: Sequence[Sequence[Device]],
    checked: Callable[[Prediction], Prediction],
) -> Prediction | None:
    """The fastest prediction over `subsets` whose devices hold their shares (memory checked in
    order of speed: a few candidates, not every subset); else the prediction over every
    device, to say why none fits."""
    options = [p for used in subsets if (p := predict(used)) is not None]
    for prediction in sorted(
        (p for p in options if p.placement is not None), key=lambda p: p.token_s
    )[:MEMORY_CHECKS]:
        prediction = checked(prediction)
        if prediction.placement is not None:
            return prediction
    every = predict(devices)
    return None if every is None else checked(every)


def cluster_placement(
    package: Package,
    config: ClusterConfig,
    members: Sequence[Member] | None = None,
    bandwidth_gbs: float | None = None,
    plan: PlanConfig | None = None,
) -> tuple[Placement | None, str]:
    """(the placement over this machine and the workers, why) or (None, why not).
    `bandwidth_gbs`: this machine's memory bandwidth (default: its measured profile); `plan`:
    the context memory is predicted for (see `plan_cluster`)."""
    chosen = plan_cluster(package, config, members, bandwidth_gbs, plan)
    return chosen.placement, chosen.why


def plan_cluster(
    package: Package,
    config: ClusterConfig,
    members: Sequence[Member] | None = None,
    bandwidth_gbs: float | None = None,
    plan: PlanConfig | None = None,
) -> ClusterPlan:
    """The split over this machine and the workers found (or `members`), with every mode's
    predictions. `plan`: the context each device's memory is predicted for (its max_context,
    context_tokens, prompt_tokens, prefill_chunk) and this machine's library footprint
    (default: a full cache of the default context; the planner's footprint constants)."""
    skipped: list[str] = []
    if members is None:
        members, skipped = find_members(package, config)
    why_skipped = f"; left out: {'; '.join(skipped)}" if skipped else ""
    if not members:
        return ClusterPlan(
            None, (), None, f"no paired worker of cluster {config.name!r} answered{why_skipped}"
        )
    if bandwidth_gbs is None:
        from devices.microbench import measured_profile

        bandwidth_gbs = measured_profile().memory_bandwidth_gbs
    parts = package.manifest.parts
    weights = [sum(t.nbytes for t in p.tensors) for p in parts]
    devices = _devices(config, members, 1e9 * bandwidth_gbs)
    single = predict_single(weights, devices[0])
    spec = package.manifest.spec
    ctx = memory_context(package, plan)
    footprint = (plan.footprint if plan else None) or DEFAULT_FOOTPRINT
    hidden = 4 * spec.hidden_size  # float32 hidden states of one token
    kinds = [p.kind for p in parts]
    predictors: dict[str, Callable[[Sequence[Device]], Prediction | None]] = {
        "pipeline": lambda used: predict_pipeline(weights, used, config.local_share, hidden),
        "tensor": lambda used: predict_tensor(weights, kinds, used, spec.num_heads, hidden),
    }
    # "always" splits over every device found; "auto" weighs which of them to use.
    subsets = [devices] if config.distribute == "always" else device_subsets(devices)
    candidates = []
    for mode, predict in predictors.items():
        if config.mode in ("auto", mode):
            best = _best_subset(
                predict,
                devices,
                subsets,
                lambda p: with_memory(p, package, devices, ctx, footprint),
            )
            if best is not None:
                candidates.append(best)
    feasible = sorted((c for c in candidates if c.placement is not None), key=lambda c: c.token_s)
    said = "; ".join(c.describe() for c in ([single] if single else []) + candidates)
    if not feasible:
        why = f"no {config.mode} split fits the devices' memory (predicted: {said}){why_skipped}"
        return ClusterPlan(single, tuple(candidates), None, why)
    best = feasible[0]
    if config.distribute == "auto" and single is not None and single.token_s <= best.token_s:
        why = (
            f"not distributed: the model fits here and one device is predicted fastest "
            f"({said}); distribute='always' to split anyway{why_skipped}"
        )
        return ClusterPlan(single, tuple(candidates), None, why)
    left = [m.node_id for m in members if m.node_id not in best.workers]
    unused = f"; not used: {', '.join(left)} (predicted no faster with them)" if left else ""
    names = ", ".join(best.workers)
    why = f"{best.mode} over this machine and {names} (predicted: {said}){unused}{why_skipped}"
    return ClusterPlan(single, tuple(candidates), best, why)
