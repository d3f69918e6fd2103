"""Predicted peak memory of a plan: what each runtime really keeps of a package, as measured.

Memory estimates are what users of edge-device runtimes complain about most (Ollama #9170,
exo #1279), so every constant below was measured on this machine (2 vCPU Xeon, onnxruntime
1.32, openvino 2026.4, Python 3.12) by `python bench/bench_plan_memory.py`, which reprints them;
`tests/planner/test_planner_memory.py` checks whole plans against a real process's peak RSS.

What the measurements showed (per byte of the tensor on disk, after a 64-token prefill and 16
decoded tokens; "mapped" counts the pages of our package's files the process keeps touched,
which RSS counts like any other memory):

- ONNX Runtime CPU copies every external initializer we hand it into memory of its own, and
  reads our memory maps to do so: float tensors cost 1x allocated (the float embedding table
  included: the Gather reads ORT's copy, not our map; 1.11x for float matrices in a whole
  Model, see ORT_CPU), plus 1x mapped while the segment loads. The engine then drops the maps'
  pages (`edge.package_files.drop_pages`): ORT never reads them again, so they are a load
  transient, not steady memory (measured on Qwen2.5-Coder-1.5B int4: RSS 2637 -> 1551 MiB
  after loading, decode speed unchanged). MatMulNBits pre-packs
  (4-bit data plus per-block sums) and keeps its scales: 1.47x allocated (8-bit: 1.31x). A
  tensor two parts share under one name (a tied float embedding) is copied twice (Gather and
  MatMul each keep their own) but mapped once. Loading peaks above the steady state by the
  last pre-packed matrix's unpacked copy (the head's data tensor, 1.0x); no growth while
  generating.
- OpenVINO maps the weight files itself and computes from the maps where it can: float
  embedding tables and quantized gather tables cost nothing allocated. It re-packs 4-bit and
  8-bit MatMulNBits weights into 8/16-bit layouts at the first inference (~1.8x allocated) and
  float matrices into blocked layouts (1x allocated, beside the map), ~3.9 MiB per block more.
  It also grows while decoding (its dynamic-shape kernels' per-shape state: 1.3-2.8 MiB per
  token per segment, still linear at 160 tokens); predictions count it up to `tokens`.
- The streamed backend reads pinned parts into memory it owns (1x, no map), maps the embedding
  (rows in use only) and streams the rest through its window buffers: plan_budget's exact
  accounting of weights plus the measured runtime, mostly llvmlite's LLVM (~44 MiB on import,
  ~36 MiB more code pages once the int4 kernel is JIT-compiled).
- The process: python + numpy + edge imports (~38 MiB), onnxruntime for the resident engine
  (+20 MiB; the streamed backend never imports it); the tokenizer ~7x its JSON size at a
  whole model's peak (see TOKENIZER_FACTOR).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import MappingProxyType

from devices.backends.row_slices import SLICE_BYTES, slice_count
from edge.format import ModelSpec
from edge.planner.costs import (
    AUX_SUFFIXES,
    GATHER_F32,
    GATHER_Q,
    INT8_ROWS,
    MATMUL_F32,
    NBITS4,
    NBITS8,
    OTHER,
    PREFILL_INT8,
    QDQ_INT8,
    ModelCosts,
    PartCost,
)
from memory_sched.budget import DEFAULT_RUNTIME_OVERHEAD

MiB = 1 << 20
PAGE = 4096

# ---- the process (bench/bench_plan_memory.py: "process") ---------------------------------------
PROCESS_BASE = 38 * MiB  # python + numpy + `import edge` (VmRSS before loading)
RESIDENT_IMPORTS = 20 * MiB  # onnxruntime, which the resident engine's backends import
# A loaded tokenizers.Tokenizer holds 9.0-9.5x its tokenizer.json in RSS, 4.4x once the heap
# its parsing freed is trimmed (`edge.heap`), after a load peak of ~13x. Peaks are what is
# predicted, and a whole model's peak comes while the engine loads, where untrimmed freed heap
# would have been reused: trimming leaves it where it was (SmolLM2 int4: 421 MiB either way).
# Over whole-model runs (SmolLM2 3.5 MB, Qwen2.5 11.4 MB) the tokenizer costs 6.7x at the peak
# (least squares, streamed runs).
TOKENIZER_FACTOR = 7.0


@dataclass(frozen=True)
class RuntimeMemory:
    """How one runtime holds a package, per tensor class (see costs.py), in bytes per byte on
    disk: `allocated` is memory the runtime owns, `mapped` the file pages it keeps touched.

    map_scope "name": the process maps each tensor name once (ONNX Runtime gets our
    `Package.tensor` maps, cached by name); "part": each part's graph maps its own regions
    (OpenVINO reads each part's graph file with its external data).
    """

    name: str
    runtime_bytes: int  # once per process when first used: code pages, thread pools, plugins
    per_block_bytes: int  # per block: kernel objects and per-node buffers
    allocated: Mapping[str, float]
    mapped: Mapping[str, float]
    map_scope: str = "name"
    # `allocated` while loaded but not yet run, where it differs (OpenVINO re-packs at its first
    # inference); None: the same as `allocated`.
    allocated_at_load: Mapping[str, float] | None = None
    prepack_transient: float = 0.0  # load peak above steady, x the last pre-packed matrix
    # The engine drops the maps' pages once the segment has loaded (ORT keeps its own copy):
    # `mapped` is then resident only while that segment loads.
    release_maps: bool = False
    growth_per_token: int = 0  # per segment, per decoded token
    growth_per_token_block: int = 0  # per block of a segment, per decoded token
    # Weights mapped from a packing stored at an earlier load (see ORT_CPU_STORED): MatMulNBits
    # tensors cost `stored_weight_bytes`, the load transient is `stored_load_transient`.
    stored_packing: bool = False
    # Matrices (MatMulNBits, transposed float Gemm) larger than this load as row slices
    # (devices/backends/row_slices.py): a load transient is then a slice's. None: whole.
    slice_bytes: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "allocated", MappingProxyType(dict(self.allocated)))
        object.__setattr__(self, "mapped", MappingProxyType(dict(self.mapped)))
        if self.allocated_at_load is not None:
            object.__setattr__(
                self, "allocated_at_load", MappingProxyType(dict(self.allocated_at_load))
            )
        if self.map_scope not in ("name", "part"):
            raise ValueError(f"map_scope must be 'name' or 'part', got {self.map_scope!r}")


_ALL_ONCE = {
    c: 1.0
    for c in (
        GATHER_F32,
        GATHER_Q,
        MATMUL_F32,
        NBITS4,
        NBITS8,
        PREFILL_INT8,
        INT8_ROWS,
        QDQ_INT8,
        OTHER,
    )
}
_NONE = dict.fromkeys(_ALL_ONCE, 0.0)

# bench/bench_plan_memory.py, "ort_cpu"/"openvino" rows: least squares over one segment holding
# the embedding, one block, ten blocks or the head, for SmolLM2 fp32, SmolLM2 int4 and
# Qwen2.5-0.5B int4 (residuals <= 4 MiB allocated, <= 7 MiB mapped). runtime_bytes is the fit's
# fixed term (allocations + the runtime's code pages as they page in), for OpenVINO plus its
# import and CPU plugin (37 MiB measured before its first segment), less the activation
# estimate the fit's 64-token prompt already contained.
# INT8_ROWS (w8a8, MatMulIntegerToFloat's packed int8 weights): fitted on SmolLM2 w8a8 alone
# (peak RSS 474.8 MiB, 45 MiB above a 1.0x guess on its 129 MiB of int8 rows).
# MATMUL_F32 allocates 0.99x in a process that loads nothing else first, but 1.11x in a whole
# `Model` (mean of 8 runs of SmolLM2 fp32, 1243-1330 MiB), 1.2x since (onnxruntime 1.32:
# 1362-1382 MiB in three quiet runs, 1434 beside another test run): freeing the tokenizer's
# load buffers raises glibc's mmap threshold, so ONNX Runtime's per-matrix copies (freed after
# pre-packing) come from the heap and some stay as fragmentation.
ORT_CPU = RuntimeMemory(
    "ort_cpu",
    runtime_bytes=int(14.5 * MiB),
    per_block_bytes=int(0.37 * MiB),
    allocated={
        **_ALL_ONCE,
        GATHER_F32: 0.98,
        GATHER_Q: 0.97,
        MATMUL_F32: 1.2,
        NBITS4: 1.47,
        NBITS8: 1.31,
        INT8_ROWS: 1.35,
    },
    mapped=_ALL_ONCE,
    map_scope="name",
    prepack_transient=1.0,
    release_maps=True,
)
OPENVINO = RuntimeMemory(
    "openvino",
    runtime_bytes=70 * MiB,
    per_block_bytes=int(3.9 * MiB),
    allocated={
        **_ALL_ONCE,
        GATHER_F32: 0.0,
        GATHER_Q: 0.0,
        MATMUL_F32: 0.99,
        NBITS4: 1.87,
        NBITS8: 1.88,
    },
    allocated_at_load={
        **_ALL_ONCE,
        GATHER_F32: 0.0,
        GATHER_Q: 0.0,
        MATMUL_F32: 0.99,
        NBITS4: 1.02,
        NBITS8: 1.0,
    },
    mapped={
        **_ALL_ONCE,
        GATHER_F32: 0.92,
        GATHER_Q: 0.08,
        MATMUL_F32: 0.95,
        NBITS4: 0.98,
        NBITS8: 0.99,
    },
    map_scope="part",
    # 10 blocks: 1.7 MiB/token over 16 tokens, 1.3 over 64; 30 blocks: 2.8 and 1.8.
    growth_per_token=int(1.0 * MiB),
    growth_per_token_block=int(0.04 * MiB),
)
# ONNX Runtime building its sessions from a packing stored in edge's cache at an earlier load
# (`devices.backends.ort_prepacked`, every load after the first): it maps the stored packed
# weights (file pages, counted like any other resident memory) and reads none of the package's
# files. MatMulNBits' packing (accuracy level 4) keeps the 4/8-bit data, the scales and a sum
# per block as wide as the scales, the zero points folded into the sums: data 1x, scales 2x,
# zero points 0x of their bytes on disk (`stored_weight_bytes`). Float tables and matrices
# are kept as they are (1x). Measured with bench/bench_resident_memory.py, the file pages of
# the store in RSS after loading: Qwen2.5-Coder-1.5B int4 (blocks of 64) 1038 MiB for 1006
# predicted, SmolLM2 int4 (blocks of 32, 8-bit head) 141 for 140, SmolLM2 float32 620 for 621,
# SmolLM2 int4 symmetric with a 4-bit head 115 for 114. Loading peaks above that
# (`stored_load_transient`): ONNX Runtime packs each matrix again while reading its original,
# the largest one held in both forms at once (the SmolLM2 int4 packages 57 MiB for 64
# predicted and 42 for 37); a float one 1.2x. Matrices over `slice_bytes` load in row slices
# (devices/backends/row_slices.py), so the transient is a slice's: the 0.5B's 8-bit head moved
# it from 330 MiB to 80, and a float head tied to a Gather no longer keeps the table resident.
ORT_CPU_STORED = replace(
    ORT_CPU,
    name="ort_cpu (stored packing)",
    allocated={**ORT_CPU.allocated, GATHER_F32: 1.0, GATHER_Q: 1.0, MATMUL_F32: 1.0},
    mapped=_NONE,
    prepack_transient=0.0,
    release_maps=False,
    stored_packing=True,
    slice_bytes=SLICE_BYTES,
)
STORED_FLOAT_TRANSIENT = 1.2  # x the largest float matrix
# A first load that stores the packing peaks above one that packs on the heap by up to this
# many times the package bytes it packs (measured: 1.06x for SmolLM2 int4, 1.12x for float32
# over a heap peak predicted 4% low, about 0.5x for the Qwen int4 packages): ONNX Runtime
# writes the optimized model and its packed copy while holding both. The engine builds a store
# only where memory holds 4x the weights.
STORE_BUILD_FACTOR = 1.25

# ONNX Runtime in a process that loads nothing before its weights and pins glibc's mmap
# threshold (a cluster worker: `edge.cluster.worker.serve`): float matrices cost the 0.99x
# measured alone (see ORT_CPU), whatever the process freed first. SmolLM2 fp32 slices of half
# the model in a worker: within 1% of its peak RSS (tests/cluster/test_cluster_memory.py).
ORT_CPU_PINNED = replace(ORT_CPU, allocated={**ORT_CPU.allocated, MATMUL_F32: 0.99})
# A backend nobody measured (a GPU through torch, an NPU provider): the weights once, in its
# own memory; nothing else is known.
GENERIC = RuntimeMemory("generic", 0, 0, _ALL_ONCE, _NONE)
RUNTIMES: dict[str, RuntimeMemory] = {"ort_cpu": ORT_CPU, "openvino": OPENVINO}

# ---- the streamed backend (bench/bench_plan_memory.py: "streamed" rows) ------------------------
# Least squares over SmolLM2 fp32/int4 and Qwen2.5-0.5B int4 at the engine's minimum budget and
# with everything pinned (residuals <= 13 MiB): what is left after the process, the pinned
# weights, the window buffers and the KV cache.
STREAM_RUNTIME = 45 * MiB  # edge.streaming's imports (llvmlite: 44 MiB), threads, buffers
STREAM_LLVMLITE = 44 * MiB  # the llvmlite share of STREAM_RUNTIME, measured anew when possible
STREAM_JIT = 36 * MiB  # LLVM code pages touched once the NBits kernel is compiled
STREAM_ACTIVATION_FACTOR = 0.25  # peak temporaries / edge.streaming's activation bound
STREAM_FAULT_AROUND = 8 << 10  # file pages one touched embedding row brings in, per tensor


def mapped_embedding(costs: ModelCosts, tokens: int) -> int:
    """The streamed backend maps the embedding: each token touches a row of each of its tensors
    (measured: ~1.5 MiB of file pages after 80 tokens)."""
    embed = costs.parts[0]
    return min(embed.weight_bytes, tokens * len(embed.tensors) * STREAM_FAULT_AROUND)


def runtime_memory(
    backend: str, runtimes: Mapping[str, RuntimeMemory] | None = None
) -> RuntimeMemory:
    """How `backend` holds a package: from `runtimes` where given (a process of another kind,
    e.g. a cluster worker), else as measured in an edge process."""
    return (runtimes or RUNTIMES).get(backend, GENERIC)


@dataclass(frozen=True)
class ImportFootprint:
    """Resident bytes of this environment's libraries once imported, measured in a fresh
    interpreter. They vary with the page cache: a library's file pages map in larger pieces
    when they are hot (measured: llvmlite 41 MiB from a cold cache, 99 MiB from a freshly
    installed, hot one), so constants measured on one machine's state mislead on another."""

    base: int  # python + numpy + `import edge`
    onnxruntime: int
    llvmlite: int  # edge.streaming's imports
    jit: int  # compiling the first NBits kernel


# What the constants above amount to: the footprint planned with when none was measured.
DEFAULT_FOOTPRINT = ImportFootprint(PROCESS_BASE, RESIDENT_IMPORTS, STREAM_LLVMLITE, STREAM_JIT)


def process_base(
    costs: ModelCosts, footprint: ImportFootprint | None, resident: bool = True
) -> int:
    """What the process costs before any weights: interpreter, libraries, tokenizer. The
    streamed backend never imports onnxruntime (its own runtime is `stream_runtime`)."""
    footprint = footprint or DEFAULT_FOOTPRINT
    imports = footprint.onnxruntime if resident else 0
    return footprint.base + imports + int(TOKENIZER_FACTOR * costs.tokenizer_bytes)


def stream_allowance(footprint: ImportFootprint | None) -> int:
    """The runtime allowance the streamed backend admits a budget with: its measured libraries
    (interpreter, numpy, llvmlite, the JIT's code pages) or the fixed default, whichever is
    larger; the tokenizer and the mapped embedding are added on top by the engine."""
    footprint = footprint or DEFAULT_FOOTPRINT
    measured = (
        footprint.base + footprint.llvmlite + footprint.jit + STREAM_RUNTIME - STREAM_LLVMLITE
    )
    return max(DEFAULT_RUNTIME_OVERHEAD, measured)


def stream_runtime(quantized: bool, footprint: ImportFootprint | None) -> int:
    """The streamed backend's runtime: llvmlite, the JIT's code pages when it compiles
    kernels (block-quantized weights), threads and buffers."""
    footprint = footprint or DEFAULT_FOOTPRINT
    return (
        STREAM_RUNTIME - STREAM_LLVMLITE + footprint.llvmlite + (footprint.jit if quantized else 0)
    )


def kv_resident(
    spec: ModelSpec, blocks: int, tokens: int, kv_heads: int | None = None, itemsize: float = 4
) -> int:
    """KV-cache bytes resident once `tokens` positions are written: the cache is np.zeros
    (untouched pages cost nothing), laid out [1, H_kv, max_context, D] per layer, so each
    head's rows are touched page by page. `kv_heads`: the heads cached where fewer than the
    model's (a tensor-parallel share caches only those its query heads read)."""
    row = int(tokens * spec.head_dim * itemsize)
    heads = spec.num_kv_heads if kv_heads is None else kv_heads
    return 2 * blocks * heads * (-(-row // PAGE) * PAGE)


def activation_bytes(spec: ModelSpec, chunk: int) -> int:
    """An estimate of the runtime's activation arena for a `chunk`-token step: the MLP's
    gate/up output and a few hidden-sized temporaries (measured: 2-6 MiB at 64 tokens)."""
    return 4 * chunk * (2 * spec.intermediate_size + 4 * spec.hidden_size)


@dataclass(frozen=True)
class Breakdown:
    """Predicted bytes of one device's share, by what holds them."""

    process: int = 0  # interpreter, libraries, tokenizer (charged to the host device)
    weights: int = 0  # memory the runtime allocated for the weights
    mapped: int = 0  # package file pages kept touched
    runtime: int = 0
    blocks: int = 0  # per-block kernel state
    kv_cache: int = 0
    activations: int = 0
    growth: int = 0  # OpenVINO's per-token growth up to `tokens`
    transient: int = 0  # load-time peak above the steady state
    load_relief: int = 0  # how much less the runtime holds while loading than when running

    @property
    def steady(self) -> int:
        return (
            self.process + self.weights + self.mapped + self.runtime + self.blocks + self.kv_cache
        )

    @property
    def peak(self) -> int:
        return self.steady + max(self.transient - self.load_relief, self.activations + self.growth)

    def items(self) -> tuple[tuple[str, int], ...]:
        return tuple(
            (k, v)
            for k, v in (
                ("process", self.process),
                ("weights", self.weights),
                ("mapped files", self.mapped),
                ("runtime", self.runtime + self.blocks),
                ("KV cache", self.kv_cache),
                ("activations", self.activations),
                ("decode growth", self.growth),
                ("load transient", self.transient),
            )
            if v
        )


@dataclass(frozen=True)
class Span:
    """Parts [start, end) on one backend, as one segment (what the engine loads)."""

    start: int
    end: int
    backend: str


def resident_breakdown(
    costs: ModelCosts,
    spans: Sequence[Span],
    *,
    tokens: int,
    decoded: int,
    chunk: int,
    charge_runtime: Iterable[str] = (),
    mapped_names: set | None = None,
    runtimes: Mapping[str, RuntimeMemory] | None = None,
) -> Breakdown:
    """Predicted memory of the parts in `spans` (all on one device), holding `tokens`
    positions of KV cache, `decoded` of them decode steps, running steps of `chunk` tokens.

    `charge_runtime`: backends whose one-off runtime cost this device pays (the caller charges
    each runtime to one device). `mapped_names`: tensor identities already mapped by earlier
    devices of the same process (updated in place), so a map shared by name is counted once.
    `runtimes`: how each backend holds weights in this process, where not as in an edge
    process (see `runtime_memory`).
    """
    mapped_names = set() if mapped_names is None else mapped_names
    weights = mapped = blocks = kv = growth = transient = relief = 0
    charged = set(charge_runtime)
    runtime = sum(runtime_memory(b, runtimes).runtime_bytes for b in charged)
    spec = costs.spec
    for span in spans:
        model = runtime_memory(span.backend, runtimes)
        parts = costs.parts[span.start : span.end]
        n_blocks = sum(p.kind == "block" for p in parts)
        span_mapped = 0
        sliced = _sliced_float_matrices(parts, model.slice_bytes)
        for part in parts:
            for name, file, offset, cls, nbytes in part.tensors:
                if model.stored_packing and cls in (NBITS4, NBITS8):
                    weights += stored_weight_bytes(name, nbytes)
                elif cls == GATHER_F32 and name in sliced:
                    pass  # the matrix reads its slices; the table is paged in by the rows used
                else:
                    weights += int(model.allocated.get(cls, 1.0) * nbytes)
                if model.allocated_at_load is not None:
                    relief += int(
                        (model.allocated.get(cls, 1.0) - model.allocated_at_load.get(cls, 1.0))
                        * nbytes
                    )
                key = (
                    (span.backend, name)
                    if model.map_scope == "name"
                    else (span.backend, part.name, file, offset)
                )
                if key not in mapped_names:
                    mapped_names.add(key)
                    span_mapped += int(model.mapped.get(cls, 0.0) * nbytes)
        blocks += model.per_block_bytes * n_blocks
        kv += kv_resident(spec, n_blocks, tokens)
        growth += decoded * (model.growth_per_token + model.growth_per_token_block * n_blocks)
        prepack = int(model.prepack_transient * _last_prepacked(costs, span))
        if model.stored_packing:
            prepack = stored_load_transient(costs, span, model.slice_bytes)
        if model.release_maps:
            transient = max(transient, prepack + span_mapped)
        else:
            mapped += span_mapped
            transient = max(transient, prepack)
    activations = activation_bytes(spec, chunk) if spans else 0
    return Breakdown(
        weights=weights,
        mapped=mapped,
        runtime=runtime,
        blocks=blocks,
        kv_cache=kv,
        activations=activations,
        growth=growth,
        transient=transient,
        load_relief=relief,
    )


def _last_prepacked(costs: ModelCosts, span: Span) -> int:
    """Bytes of the unpacked copy a runtime frees after pre-packing the segment's last matrix
    (its data tensor: a float matrix, or MatMulNBits' packed bits without the scales), unless
    another part of the segment reads the same tensor (a tied float embedding keeps it)."""
    parts = costs.parts[span.start : span.end]
    last = parts[-1]
    names = {t[0] for p in parts[:-1] for t in p.tensors}
    matrices = [
        nbytes
        for name, _, _, cls, nbytes in last.tensors
        if cls in (MATMUL_F32, NBITS4, NBITS8)
        and name not in names
        and not name.endswith(AUX_SUFFIXES)
    ]
    return max(matrices, default=0)


def _sliced_float_matrices(parts: Sequence[PartCost], slice_bytes: int | None) -> set[str]:
    """Float matrices the runtime loads in row slices: a table they share with a Gather (a tied
    embedding) is then no longer read whole at load."""
    return {
        name
        for part in parts
        for name, _, _, cls, nbytes in part.tensors
        if cls == MATMUL_F32 and _slices(nbytes, slice_bytes) > 1
    }


def _nbits_stem(name: str) -> str:
    """The matrix a MatMulNBits tensor (data `X.q4`, `X.scales`, `X.zero_points`) belongs to."""
    stem = name.removesuffix(".scales").removesuffix(".zero_points")
    return stem.rpartition(".")[0] if stem == name else stem  # drop ".qN"


def _nbits_sizes(tensors: Iterable[tuple[str, str, int, str, int]]) -> dict[str, int]:
    """Bytes on disk of each MatMulNBits matrix (data, scales and zero points together)."""
    sizes: dict[str, int] = {}
    for name, _, _, cls, nbytes in tensors:
        if cls in (NBITS4, NBITS8):
            sizes[_nbits_stem(name)] = sizes.get(_nbits_stem(name), 0) + nbytes
    return sizes


def _slices(nbytes: int, slice_bytes: int | None) -> int:
    return 1 if slice_bytes is None or not nbytes else slice_count(nbytes, slice_bytes)


def stored_weight_bytes(name: str, nbytes: int) -> int:
    """Bytes a MatMulNBits tensor of `nbytes` on disk takes in a stored packing: the data as
    is, the scales twice (beside them a sum per block), the zero points not at all."""
    if name.endswith(".scales"):
        return 2 * nbytes
    return 0 if name.endswith(".zero_points") else nbytes


def stored_load_transient(costs: ModelCosts, span: Span, slice_bytes: int | None) -> int:
    """A mapped load's peak above its steady state: the largest MatMulNBits matrix (or row
    slice of one) in its packed and its original form at once, or STORED_FLOAT_TRANSIENT x the
    largest float one."""
    packed: dict[str, int] = {}
    largest = 0
    for part in costs.parts[span.start : span.end]:
        sizes = _nbits_sizes(part.tensors)
        for name, _, _, cls, nbytes in part.tensors:
            if cls == MATMUL_F32:
                one = nbytes // _slices(nbytes, slice_bytes)
                largest = max(largest, int(STORED_FLOAT_TRANSIENT * one))
            elif cls in (NBITS4, NBITS8):
                stem = _nbits_stem(name)
                both = nbytes + stored_weight_bytes(name, nbytes)
                packed[stem] = packed.get(stem, 0) + both // _slices(sizes[stem], slice_bytes)
    return max(largest, *packed.values(), 0)
