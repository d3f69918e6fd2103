"""NPUs through ONNX Runtime's execution providers: Qualcomm QNN (Hexagon HTP), Apple CoreML
(Neural Engine) and Android NNAPI.

An NPU compiles a graph ahead of time, so `supports` checks a part's graphs structurally, on
the bytes, before anything is compiled: (1) every input has a fixed shape (the manifest's
`static_graphs`, written by `edge quantize --quant q-static-int8`), (2) on integer NPUs (QNN's
HTP, NNAPI) every MatMul/Gemm reads both operands through DequantizeLinear from integer tensors
of the types the NPU computes in, (3) every op is in the provider's op set (listed below with
its source). Only `--static-ops standard` packages can pass (3) for their blocks and head (the
default static graphs use ONNX Runtime's contrib attention and norms), and for CoreML, which
has no Q/DQ, only their float32 form (`--quant static-fp32`). Passing is necessary,
not sufficient: each provider also has per-op rules (ranks, attributes) that only its compiler
checks. Sessions are created with `session.disable_cpu_ep_fallback=1`, so a graph the NPU
cannot take whole fails to compile (and the engine falls back to the CPU, saying why) instead of
silently running partly on the CPU.

Run time is ONNX Runtime's, as for the CPU backend (IOBinding with host buffers; the provider
copies to its memory). `is_available` is false unless this onnxruntime build lists the
provider: the PyPI `onnxruntime` wheel has none of the three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import onnxruntime as ort

from devices.backend import YES, PackageSource, SegmentGraph, Support
from devices.backends.onnx_graph import GraphInfo, read_graph
from devices.backends.ort_cpu import CPU, OrtCpuBackend
from edge.errors import ConfigError
from edge.format import PartEntry

MATMULS = ("MatMul", "Gemm")
# Data-movement ops between DequantizeLinear and a MatMul keep it quantized (ORT's QDQ
# propagation moves Q/DQ across them).
MOVES = ("Reshape", "Squeeze", "Unsqueeze", "Flatten", "Transpose")


def _op_set(text: str) -> frozenset[str]:
    return frozenset(text.split())


SHOWN_PROBLEMS = 4


@dataclass(frozen=True)
class NpuRules:
    """What one provider's NPU path accepts, structurally."""

    ops: frozenset[str]  # ai.onnx op types, or "domain:Op" for other domains
    activation_types: frozenset[str]  # element types of quantized activations
    weight_types: frozenset[str]  # element types of quantized weights
    source: str  # where the op list comes from
    # Whether matmuls must be QDQ (integer hardware); False where the NPU computes in float
    # (CoreML: the Neural Engine runs float16, and Q/DQ are not in its op list at all).
    quantized: bool = True


def shape_problems(graph: GraphInfo) -> list[str]:
    """Inputs whose shape is not fully fixed."""
    problems = []
    for value in graph.inputs:
        if value.name in graph.initializers:
            continue
        if value.dims is None:
            problems.append(f"input {value.name} has no shape")
            continue
        dynamic = [d for d in value.dims if not (isinstance(d, int) and d > 0)]
        if dynamic:
            problems.append(f"input {value.name} has dynamic dimension {dynamic[0]!r}")
    return problems


def qdq_problems(graph: GraphInfo, rules: NpuRules) -> list[str]:
    """MatMuls whose operands are not integer tensors of the NPU's types behind DequantizeLinear."""
    problems = []
    for node in graph.nodes:
        if node.op_type not in MATMULS or node.domain not in ("", "ai.onnx"):
            continue
        for operand in node.inputs[:2]:
            dq = graph.producers.get(operand)
            while dq is not None and dq.op_type in MOVES:  # QDQ propagates through these
                dq = graph.producers.get(dq.inputs[0])
            if dq is None or dq.op_type != "DequantizeLinear":
                problems.append(
                    f"{node.op_type} {node.name or node.outputs[0]} reads {operand} "
                    "in float, not through DequantizeLinear (not QDQ)"
                )
                continue
            weight = dq.inputs[0] in graph.initializers
            kind = graph.quantized_type(dq.inputs[0])
            allowed = rules.weight_types if weight else rules.activation_types
            if kind not in allowed:
                problems.append(
                    f"{node.op_type} {node.name or node.outputs[0]}: "
                    f"{'weight' if weight else 'activation'} {dq.inputs[0]} is "
                    f"{kind}, not one of {sorted(allowed)}"
                )
    return problems


def op_problems(graph: GraphInfo, rules: NpuRules) -> list[str]:
    missing = sorted(graph.ops - rules.ops)
    return [f"ops {missing} are not in its op set ({rules.source})"] if missing else []


def check_graph(graph: GraphInfo, rules: NpuRules) -> list[str]:
    """Every reason an NPU could not take this graph whole (empty: structurally fine)."""
    qdq = qdq_problems(graph, rules) if rules.quantized else []
    return shape_problems(graph) + qdq + op_problems(graph, rules)


class NpuEpBackend(OrtCpuBackend):
    """Shared machinery: the ORT CPU backend with an NPU provider in front of the CPU."""

    rules: ClassVar[NpuRules]
    install: ClassVar[str]
    # option name -> allowed values (None: any string); passed as provider options
    PROVIDER_OPTIONS: ClassVar[Mapping[str, tuple[str, ...] | None]] = {}

    @classmethod
    def check_options(cls, options: dict) -> dict:
        own = {k: v for k, v in options.items() if k in cls.PROVIDER_OPTIONS}
        for key, value in own.items():
            allowed = cls.PROVIDER_OPTIONS[key]
            if not isinstance(value, str) or (allowed is not None and value not in allowed):
                raise ConfigError(
                    f"backend {cls.name!r} option {key}={value!r}; allowed: "
                    f"{list(allowed) if allowed else 'a string'}"
                )
        fallback = options.get("allow_cpu_fallback", False)
        if not isinstance(fallback, bool):
            raise ConfigError(
                f"backend {cls.name!r} option allow_cpu_fallback={fallback!r} must be true or false"
            )
        rest = {k: v for k, v in options.items() if k not in own and k != "allow_cpu_fallback"}
        return {**super().check_options(rest), **own, "allow_cpu_fallback": fallback}

    @property
    def device(self) -> str:
        return f"NPU via {self.provider}"

    def supports(self, part: PartEntry, package: PackageSource) -> Support:
        if not part.static_graphs:
            problems = check_graph(read_graph(package.graph_bytes(part)), self.rules)
            return Support(
                False,
                f"{part.name} has no fixed-shape graphs (export with --quant "
                f"q-static-int8): {_summary(part.graph, problems)}",
            )
        for step, graph_file in part.static_graphs:
            problems = check_graph(read_graph(package.graph_bytes(part, step)), self.rules)
            if problems:
                return Support(
                    False,
                    f"{self.provider} cannot run {part.name} whole: "
                    f"{_summary(graph_file, problems)}",
                )
        return YES

    def provider_options(self) -> dict[str, str]:
        return {k: str(v) for k, v in self.options.items() if k in self.PROVIDER_OPTIONS}

    def providers(self) -> Sequence[Any]:
        return [(self.provider, self.provider_options()), CPU]

    def session_options(self, graph: SegmentGraph) -> ort.SessionOptions:
        options = super().session_options(graph)
        if not self.options.get("allow_cpu_fallback", False):
            options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
        return options

    def is_available(self) -> Support:
        available = super().is_available()
        if not available:
            return Support(False, f"{available.reason}; {self.install}")
        return available


def _summary(graph_file: str, problems: list[str]) -> str:
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    return f"{graph_file}: {shown}" + (f" (and {more} more)" if more > 0 else "")


# Source: onnxruntime/core/providers/qnn/builder/op_builder_factory.cc (ORT main, 2026): the op
# types the QNN EP registers builders for. No com.microsoft ops (GroupQueryAttention,
# SimplifiedLayerNormalization, MatMulNBits): a graph using them cannot run on QNN whole.
QNN_OPS = _op_set("""
Abs Add And ArgMax ArgMin Asin Atan AveragePool BatchNormalization Cast Ceil Clip Concat Conv
ConvTranspose Cos CumSum DepthToSpace DequantizeLinear Div Einsum Elu Equal Exp Expand Flatten
Floor Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool Greater
GreaterOrEqual GridSample HardSigmoid HardSwish InstanceNormalization Inverse LRN LSTM
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax LpNormalization MatMul Max MaxPool
Mean Min Mod Mul Neg Not Or PRelu Pad Pow QuantizeLinear RMSNormalization RandomUniformLike
Reciprocal ReduceL2 ReduceMax ReduceMean ReduceMin ReduceProd ReduceSum Relu Reshape Resize Round
STFT ScatterElements ScatterND Sigmoid Sign Sin Slice Softmax SpaceToDepth Split Sqrt Squeeze Sub
Sum Tanh ThresholdedRelu Tile TopK Transpose Unsqueeze Upsample Where com.microsoft:FusedMatMul
""")

# Source: tools/ci_build/github/apple/coreml_supported_mlprogram_ops.md (ORT main, 2026), the
# ML Program op list (onnxruntime 1.32's wheel ships it as tools/mobile_helpers/). It has no
# QuantizeLinear/DequantizeLinear and no Gather: int8 QDQ graphs and the embedding's row gather
# do not run whole; CoreML computes in float, quantizing weights its own way (coremltools).
COREML_OPS = _op_set("""
Add ArgMax AveragePool Cast Ceil Clip Concat Conv ConvTranspose Cos DepthToSpace Div Elu Erf Exp
GatherND Gelu Gemm GlobalAveragePool GlobalMaxPool GridSample GroupNormalization HardSigmoid
Identity InstanceNormalization LayerNormalization LeakyRelu MatMul Max MaxPool Mul PRelu Pow Range
Reciprocal ReduceMax ReduceMean ReduceSum Relu Reshape Resize Round Shape Sigmoid Sin Slice Softmax
Softplus Split Sqrt Squeeze Sub Tanh Tile Transpose Unsqueeze com.microsoft:FusedConv
com.microsoft:QuickGelu
""")

# Source: onnxruntime/core/providers/nnapi/nnapi_builtin/builders/op_builder_factory.cc.
NNAPI_OPS = _op_set("""
Abs Add AveragePool BatchNormalization Cast Clip Concat Conv DepthToSpace DequantizeLinear Div Elu
Exp Flatten Floor Gather Gemm GlobalAveragePool GlobalMaxPool Identity LRN LeakyRelu Log MatMul
Max MaxPool Min Mul Neg PRelu Pad Pow QLinearAdd QLinearAveragePool QLinearConv QLinearMatMul
QLinearMul QLinearSigmoid QuantizeLinear ReduceMean Relu Reshape Resize Sigmoid Sin Slice Softmax
Sqrt Squeeze Sub Tanh Transpose Unsqueeze
""")

INT8 = frozenset({"int8", "uint8"})
INT16 = frozenset({"int16", "uint16"})


class QnnBackend(NpuEpBackend):
    """Qualcomm Hexagon NPU (HTP) through ONNX Runtime's QNN provider.

    Options (QNN provider options): backend_path (libQnnHtp.so / QnnHtp.dll),
    htp_performance_mode, htp_graph_finalization_optimization_mode, enable_htp_fp16_precision,
    qnn_context_priority, profiling_level, soc_model, htp_arch, device_id, vtcm_mb; plus
    threads and allow_cpu_fallback.
    """

    name: ClassVar[str] = "ort_qnn"
    provider: ClassVar[str] = "QNNExecutionProvider"
    install: ClassVar[str] = (
        "install onnxruntime-qnn on a Snapdragon (Windows on ARM or "
        "Linux) device with the QNN SDK's libQnnHtp"
    )
    rules: ClassVar[NpuRules] = NpuRules(
        QNN_OPS, INT8 | INT16, INT8 | INT16 | {"int4", "uint4"}, "QNN op_builder_factory.cc"
    )
    PROVIDER_OPTIONS: ClassVar[Mapping[str, tuple[str, ...] | None]] = {
        "backend_path": None,
        "htp_performance_mode": (
            "burst",
            "balanced",
            "default",
            "high_performance",
            "high_power_saver",
            "low_balanced",
            "extreme_power_saver",
            "low_power_saver",
            "power_saver",
            "sustained_high_performance",
        ),
        "htp_graph_finalization_optimization_mode": ("0", "1", "2", "3"),
        "enable_htp_fp16_precision": ("0", "1"),
        "qnn_context_priority": ("low", "normal", "normal_high", "high"),
        "profiling_level": ("off", "basic", "detailed"),
        "soc_model": None,
        "htp_arch": None,
        "device_id": None,
        "vtcm_mb": None,
    }

    def provider_options(self) -> dict[str, str]:
        return {
            "backend_path": "libQnnHtp.so",
            "htp_performance_mode": "burst",
            **super().provider_options(),
        }


class CoreMlBackend(NpuEpBackend):
    """Apple Neural Engine through ONNX Runtime's CoreML provider (ML Program format).

    Options: ModelFormat, MLComputeUnits, RequireStaticInputShapes, EnableOnSubgraphs,
    SpecializationStrategy, ProfileComputePlan, AllowLowPrecisionAccumulationOnGPU,
    ModelCacheDirectory; plus threads and allow_cpu_fallback.
    """

    name: ClassVar[str] = "ort_coreml"
    provider: ClassVar[str] = "CoreMLExecutionProvider"
    install: ClassVar[str] = "use onnxruntime on macOS or iOS, whose builds include CoreML"
    rules: ClassVar[NpuRules] = NpuRules(
        COREML_OPS,
        frozenset(),
        frozenset(),
        "CoreML coreml_supported_mlprogram_ops.md",
        quantized=False,
    )
    PROVIDER_OPTIONS: ClassVar[Mapping[str, tuple[str, ...] | None]] = {
        "ModelFormat": ("MLProgram", "NeuralNetwork"),
        "MLComputeUnits": ("CPUOnly", "CPUAndNeuralEngine", "CPUAndGPU", "ALL"),
        "RequireStaticInputShapes": ("0", "1"),
        "EnableOnSubgraphs": ("0", "1"),
        "SpecializationStrategy": ("Default", "FastPrediction"),
        "ProfileComputePlan": ("0", "1"),
        "AllowLowPrecisionAccumulationOnGPU": ("0", "1"),
        "ModelCacheDirectory": None,
    }

    def provider_options(self) -> dict[str, str]:
        return {
            "ModelFormat": "MLProgram",
            "MLComputeUnits": "CPUAndNeuralEngine",
            "RequireStaticInputShapes": "1",
            **super().provider_options(),
        }


class NnapiBackend(NpuEpBackend):
    """Android NNAPI (NPU, DSP or GPU) through ONNX Runtime's NNAPI provider.

    Options: the NNAPI flags of nnapi_provider_factory.h as "0"/"1": NNAPI_FLAG_USE_FP16,
    NNAPI_FLAG_USE_NCHW, NNAPI_FLAG_CPU_DISABLED (default "1": never NNAPI's own CPU
    reference), NNAPI_FLAG_CPU_ONLY; plus threads and allow_cpu_fallback.
    """

    name: ClassVar[str] = "ort_nnapi"
    provider: ClassVar[str] = "NnapiExecutionProvider"
    install: ClassVar[str] = "use the Android build of onnxruntime (Maven onnxruntime-android)"
    # NNAPI quantizes activations as uint8 (TENSOR_QUANT8_ASYMM), weights int8 per channel.
    rules: ClassVar[NpuRules] = NpuRules(
        NNAPI_OPS, frozenset({"uint8"}), INT8, "NNAPI op_builder_factory.cc"
    )
    PROVIDER_OPTIONS: ClassVar[Mapping[str, tuple[str, ...] | None]] = {
        flag: ("0", "1")
        for flag in (
            "NNAPI_FLAG_USE_FP16",
            "NNAPI_FLAG_USE_NCHW",
            "NNAPI_FLAG_CPU_DISABLED",
            "NNAPI_FLAG_CPU_ONLY",
        )
    }

    def provider_options(self) -> dict[str, str]:
        return {"NNAPI_FLAG_CPU_DISABLED": "1", **super().provider_options()}
