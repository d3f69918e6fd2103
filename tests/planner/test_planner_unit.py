"""The planner as a pure function, on synthetic manifests (no weights, no processes): the same
inputs give the same plan; an NPU without static int8 graphs never gets a part (and the plan
says why); a split is chosen only when it pays; a budget too small for anything is refused with
the smallest budget that works, and that budget works; built-in profiles answer "what if"."""

from __future__ import annotations

import dataclasses

import pytest

from devices.profiles import DeviceProfile, platform_by_name, profile_by_name
from edge.errors import BudgetTooSmallError, ConfigError
from edge.placement import Placement
from edge.planner import Device, PlanConfig, evaluate, make_plan, stream_minimum
from edge.planner.costs import GATHER_Q, NBITS4, NBITS8, OTHER, QDQ_INT8, model_costs

MiB = 1 << 20
CONFIG = PlanConfig(max_context=1024, prompt_tokens=128)


def _cpu(
    name: str = "cpu", memory: int = 8 << 30, bandwidth: float = 20.0, pool: str | None = None
) -> DeviceProfile:
    return DeviceProfile(
        name,
        "cpu",
        memory,
        bandwidth,
        200.0,
        800.0,
        4,
        "published spec: test CPU",
        memory_pool=pool,
    )


def _gpu(memory: int, bandwidth: float = 200.0) -> DeviceProfile:
    return DeviceProfile(
        "gpu",
        "gpu",
        memory,
        bandwidth,
        5000.0,
        20000.0,
        16,
        "published spec: test GPU",
        host_link_gbs=16.0,
    )


def test_planner_costs_classify_tensors(manifest_factory) -> None:
    """Tensor classes come from exporter names: gather tables, MatMulNBits data with its
    scales, norms; static QDQ rows; FLOPs and KV bytes from the spec."""
    costs = model_costs(manifest_factory(quant="int4"))
    embed, block, head = costs.parts[0], costs.parts[1], costs.parts[-1]
    assert set(embed.class_bytes) == {GATHER_Q}
    assert set(block.class_bytes) == {NBITS4, OTHER}
    assert set(head.class_bytes) == {NBITS8, OTHER}
    spec = costs.spec
    assert block.kv_bytes_per_token == 2 * spec.num_kv_heads * spec.head_dim * 4
    assert head.flops_per_token == 2 * spec.hidden_size * spec.vocab_size
    assert block.decode_bytes == block.class_bytes[NBITS4]
    static = model_costs(manifest_factory(quant="static"))
    assert static.parts[1].static_steps == (1, 64)
    assert QDQ_INT8 in static.parts[1].class_bytes


def test_planner_is_pure(manifest_factory) -> None:
    """Same inputs, same plan (equal dataclasses and equal JSON), and the inputs untouched."""
    manifest = manifest_factory()
    devices = [Device(_cpu(), "ort_cpu"), Device(_gpu(1 << 30), "ort_cuda")]
    before = dataclasses.asdict(manifest)
    first, second = make_plan(manifest, devices, CONFIG), make_plan(manifest, devices, CONFIG)
    assert first == second
    assert first.to_dict() == second.to_dict()
    assert dataclasses.asdict(manifest) == before
    # tuples are accepted for devices, as (profile, backend, budget)
    assert (
        make_plan(manifest, [(_cpu(), "ort_cpu", None), (_gpu(1 << 30), "ort_cuda", None)], CONFIG)
        == first
    )


def test_planner_npu_without_static_graphs_gets_nothing(manifest_factory) -> None:
    """On the phone (CPU + GPU + NPU) a package without static int8 graphs runs nowhere on
    the NPU, and every part the NPU would prefill faster says why."""
    manifest = manifest_factory(quant="int4")
    devices = [
        Device(p, {"npu": "ort_qnn", "gpu": "ort_cuda"}.get(p.kind, "ort_cpu"))
        for p in platform_by_name("snapdragon-8-gen-3")
    ]
    plan = make_plan(manifest, devices, CONFIG)
    used = {s.device for s in (*plan.decode, *plan.prefill)}
    assert not any("npu" in d for d in used)
    npu = [f for f in plan.fallbacks if "npu" in f.device]
    assert npu and all("no static int8 graph" in f.reason for f in npu)
    assert {f.phase for f in npu} >= {"prefill"}
    covered = {p for f in npu if f.phase == "prefill" for p in range(f.start, f.end)}
    assert covered >= set(range(1, len(manifest.parts) - 1))  # every block


def test_planner_npu_takes_static_prefill_not_decode(manifest_factory) -> None:
    """With static int8 graphs the NPU takes the prompt (its int8 rate), decode stays on the
    CPU/GPU, and the plan says both why and that the two placements differ."""
    manifest = manifest_factory(quant="static")
    cpu, npu = _cpu(pool="soc"), profile_by_name("snapdragon-8-gen-3-npu")
    plan = make_plan(manifest, [Device(cpu, "ort_cpu"), Device(npu, "ort_qnn")], CONFIG)
    assert all(s.backend == "ort_cpu" for s in plan.decode)
    assert any(s.backend == "ort_qnn" for s in plan.prefill)
    assert plan.prefill_placement() != plan.placement()
    assert any("decode stays on CPU/GPU" in f.reason for f in plan.fallbacks if f.phase == "decode")
    assert any("different placement" in n for n in plan.notes)


def test_planner_split_only_when_it_pays(manifest_factory) -> None:
    """Two runtimes on one CPU: no split (it gains nothing). A GPU ten times faster that holds
    the model: everything on it. The same GPU with half the memory the model needs: a split,
    and the parts left on the CPU say the GPU's budget is why."""
    manifest = manifest_factory(layers=8, hidden=1024, ffn=4096, vocab=32000, quant="int4")
    cpu = _cpu()
    same = make_plan(manifest, [Device(cpu, "ort_cpu"), Device(cpu, "openvino")], CONFIG)
    assert len(same.decode) == 1
    big = make_plan(manifest, [Device(cpu, "ort_cpu"), Device(_gpu(4 << 30), "ort_cuda")], CONFIG)
    assert [s.backend for s in big.decode] == ["ort_cuda"]
    assert big.decode_tokens_per_s > same.decode_tokens_per_s
    weights = model_costs(manifest).weight_bytes
    small = make_plan(
        manifest, [Device(cpu, "ort_cpu"), Device(_gpu(4 << 30), "ort_cuda", weights // 2)], CONFIG
    )
    assert {s.backend for s in small.decode} == {"ort_cpu", "ort_cuda"}
    assert same.decode_tokens_per_s < small.decode_tokens_per_s < big.decode_tokens_per_s
    on_cpu = [f for f in small.fallbacks if f.phase == "decode" and f.device == "gpu/ort_cuda"]
    assert on_cpu and all("over its" in f.reason and "budget" in f.reason for f in on_cpu)
    gpu = next(u for u in small.devices if u.device == "gpu/ort_cuda")
    assert gpu.peak_bytes <= gpu.limit_bytes
    assert small.transfers and all(
        t.bytes_per_token == 4 * manifest.spec.hidden_size for t in small.transfers
    )


def test_planner_split_gain_threshold(manifest_factory) -> None:
    """A second CPU 5% faster with its own memory: with the default 10% threshold one device
    runs everything; with the threshold at 0 the planner may split, and never predicts a
    slower plan than the single device."""
    manifest = manifest_factory(layers=8, quant="fp32")
    devices = [
        Device(_cpu("a", bandwidth=20.0), "ort_cpu"),
        Device(_cpu("b", bandwidth=21.0), "ort_cpu"),
    ]
    default = make_plan(manifest, devices, CONFIG)
    assert len(default.decode) == 1
    eager = make_plan(manifest, devices, dataclasses.replace(CONFIG, min_split_gain=0.0))
    assert eager.decode_tokens_per_s >= default.decode_tokens_per_s


@pytest.mark.parametrize("model", ["small", "qwen15"])
def test_planner_budget_too_small_states_minimum(
    model: str, manifest_factory, qwen15_shaped
) -> None:
    """Below every plan: BudgetTooSmallError whose `minimum` is the smallest budget that works
    (a small model: everything resident, under the streamed engine's fixed allowance; a 1.5B
    model: streamed, the engine's own minimum); exactly that budget plans, one byte less not."""
    manifest = manifest_factory(layers=8, quant="int4") if model == "small" else qwen15_shaped
    with pytest.raises(BudgetTooSmallError) as info:
        make_plan(manifest, [Device(_cpu(), "ort_cpu", 20 * MiB)], CONFIG)
    minimum = info.value.minimum
    streamed = stream_minimum(manifest, max_context=1024, prefill_chunk=64)
    assert minimum <= streamed
    assert info.value.budget == 20 * MiB
    assert f"({minimum} bytes" in str(info.value)
    plan = make_plan(manifest, [Device(_cpu(), "ort_cpu", minimum)], CONFIG)
    assert plan.mode == ("resident" if model == "small" else "streamed")
    if model == "qwen15":
        assert minimum == streamed
        assert plan.streaming.budget == minimum and plan.streaming.window == 1
    assert plan.peak_bytes <= minimum
    with pytest.raises(BudgetTooSmallError):
        make_plan(manifest, [Device(_cpu(), "ort_cpu", minimum - 1)], CONFIG)


def test_planner_resident_mode_refuses_streaming(qwen15_shaped) -> None:
    minimum = stream_minimum(qwen15_shaped, max_context=1024)
    with pytest.raises(BudgetTooSmallError, match="everything resident"):
        make_plan(
            qwen15_shaped,
            [Device(_cpu(), "ort_cpu", minimum)],
            dataclasses.replace(CONFIG, mode="resident"),
        )


def test_planner_streams_only_when_nothing_resident_fits(manifest_factory) -> None:
    """A budget between the streamed minimum and the resident need streams, says why, and
    predicts the disk's re-reads; a generous one stays resident."""
    manifest = manifest_factory(layers=8, hidden=1024, ffn=4096, vocab=32000, quant="fp32")
    resident = make_plan(manifest, [Device(_cpu(), "ort_cpu")], CONFIG)
    assert resident.mode == "resident" and resident.streaming is None
    minimum = stream_minimum(manifest, max_context=1024)
    budget = (minimum + resident.peak_bytes) // 2
    plan = make_plan(manifest, [Device(_cpu(), "ort_cpu", budget)], CONFIG)
    assert plan.mode == "streamed"
    assert plan.notes and "no resident plan fits" in plan.notes[0]
    streaming = plan.streaming
    if streaming.streamed and streaming.window < len(streaming.streamed):
        assert streaming.read_bytes_per_token > 0
        assert any("streamed from disk" in f.reason for f in plan.fallbacks)
    assert plan.peak_bytes <= budget
    (segment,) = plan.engine_config().placement.segments
    assert segment.backend == "streamed" and segment.option_dict["budget"] == budget


def test_planner_what_if_builtin_profiles(qwen15_shaped) -> None:
    """A 1.5B int4 model on the built-in Pi 5 (7 GB) plans resident with a predicted speed;
    on a Pi 4 under 1 GB it streams, slower; on the Jetson the GPU decodes."""
    pi5 = make_plan(qwen15_shaped, [(profile_by_name("pi5"), "ort_cpu", None)])
    assert pi5.mode == "resident"
    assert 1 < pi5.decode_tokens_per_s < 20 and pi5.ttft_s > 0
    assert pi5.peak_bytes < profile_by_name("pi5").memory_bytes
    pi4 = make_plan(
        qwen15_shaped, [(profile_by_name("pi4"), "ort_cpu", 1 << 30)], PlanConfig(disk_gbs=0.35)
    )
    assert pi4.mode == "streamed"
    assert pi4.decode_tokens_per_s < pi5.decode_tokens_per_s
    jetson = make_plan(
        qwen15_shaped,
        [
            Device(p, "ort_cuda" if p.kind == "gpu" else "ort_cpu")
            for p in platform_by_name("jetson-orin-nano")
        ],
    )
    assert any(s.backend == "ort_cuda" for s in jetson.decode)


def test_planner_evaluate_placement(manifest_factory) -> None:
    """evaluate() prices a placement chosen by hand and reports broken budgets as notes."""
    manifest = manifest_factory(layers=6)
    n = len(manifest.parts)
    cpu = _cpu()
    placement = Placement.split(n, [(0, "ort_cpu"), (3, "openvino"), (5, "ort_cpu")])
    plan = evaluate(manifest, [Device(cpu, "ort_cpu"), Device(cpu, "openvino")], placement, CONFIG)
    assert plan.placement() == placement
    assert [t.after for t in plan.transfers if t.phase == "decode"] == ["block.1", "block.3"]
    tight = evaluate(manifest, [Device(cpu, "ort_cpu", 10 * MiB)], Placement.single(n), CONFIG)
    assert any("over budget" in note for note in tight.notes)
    with pytest.raises(ConfigError, match="openvino"):
        evaluate(manifest, [Device(cpu, "ort_cpu")], placement, CONFIG)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"prompt_tokens": 0}, "prompt_tokens=0"),
        ({"max_segments": 0}, "max_segments=0"),
        ({"min_split_gain": 1.5}, "min_split_gain=1.5"),
        ({"mode": "fast"}, "'fast'"),
        ({"disk_gbs": 0}, "disk_gbs=0"),
        ({"max_context": -1}, "max_context=-1"),
    ],
)
def test_planner_config_rejects_bad_values(kwargs: dict, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
        PlanConfig(**kwargs)


def test_planner_device_rejects_bad_values() -> None:
    with pytest.raises(ConfigError, match="budget"):
        Device(_cpu(), "ort_cpu", 0)
    with pytest.raises(ConfigError, match="backend"):
        Device(_cpu(), "")
    with pytest.raises(ConfigError, match="DeviceProfile"):
        Device("pi5")  # type: ignore[arg-type]


def test_planner_shared_memory_counts_the_process(qwen15_shaped) -> None:
    """On a Jetson the CPU and GPU share memory: a budget the GPU's share fits alone but not
    with the process beside it (interpreter, tokenizer) is refused, a little more is not."""
    devices = [
        Device(p, "ort_cuda" if p.kind == "gpu" else "ort_cpu")
        for p in platform_by_name("jetson-orin-nano")
    ]
    plan = make_plan(qwen15_shaped, devices, CONFIG)
    gpu = next(u for u in plan.devices if u.kind == "gpu")
    assert gpu.decode_parts and gpu.peak_bytes < plan.peak_bytes  # the process is extra
    tight = [dataclasses.replace(d, budget=gpu.peak_bytes + MiB) for d in devices]
    tight_plan = make_plan(qwen15_shaped, tight, CONFIG)
    assert tight_plan.peak_bytes <= gpu.peak_bytes + MiB  # it had to plan differently
    roomy = [dataclasses.replace(d, budget=plan.peak_bytes) for d in devices]
    assert make_plan(qwen15_shaped, roomy, CONFIG).decode == plan.decode


def test_planner_predicts_the_stored_packing_loads(qwen15_shaped) -> None:
    """A plan on ONNX Runtime's CPU backend also predicts the loads that map its packing stored
    at an earlier load: the 4-bit data once, scales and block sums, no zero points, no package
    pages, and the head in both forms while it loads; the first load, which builds the store,
    peaks above the heap path. `edge plan` says both; a plan on OpenVINO alone has neither."""
    from edge.planner import memory
    from edge.planner.render import describe

    plan = make_plan(qwen15_shaped, [Device(_cpu(), "ort_cpu")], CONFIG)
    stored = plan.stored_packing
    assert stored is not None and stored.stored is None
    assert stored.mapped_peak_bytes < plan.peak_bytes < stored.first_load_peak_bytes
    costs = model_costs(qwen15_shaped)
    nbits = [
        (name, nbytes)
        for part in costs.parts
        for name, _, _, cls, nbytes in part.tensors
        if cls in (NBITS4, NBITS8)
    ]
    scales = sum(n for name, n in nbits if name.endswith(".scales"))
    data = sum(n for name, n in nbits if not name.endswith((".scales", ".zero_points")))
    assert sum(memory.stored_weight_bytes(name, n) for name, n in nbits) == data + 2 * scales
    last = memory.Span(len(costs.parts) - 1, len(costs.parts), "ort_cpu")
    head = memory.stored_load_transient(costs, last, memory.SLICE_BYTES)
    whole = memory.stored_load_transient(
        costs, everything := memory.Span(0, last.end, "ort_cpu"), None
    )
    assert head == memory.stored_load_transient(costs, everything, memory.SLICE_BYTES)
    # the head loads in row slices: its transient is a slice's, no longer the whole matrix's
    assert whole > 3 * head
    text = describe(plan)
    assert "every later load maps them" in text and "the first load packs and stores" in text
    found = describe(
        dataclasses.replace(plan, stored_packing=dataclasses.replace(stored, stored=True))
    )
    assert "this load maps them" in found
    openvino = make_plan(qwen15_shaped, [Device(_cpu(), "openvino")], CONFIG)
    assert openvino.stored_packing is None
