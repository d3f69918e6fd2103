"""Weight-only quantization settings: one frozen, validated object written into the manifest.

The settings mirror what ONNX Runtime's `com.microsoft.MatMulNBits` can execute, so anything this
config accepts can be packed for that kernel without further checks.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

ALLOWED_BITS = (4, 8)
ALLOWED_BLOCK_SIZES = (16, 32, 64, 128, 256)
# MatMulNBits accuracy_level: 0 unset (fp32 here), 1 fp32, 2 fp16, 3 bf16, 4 int8 activations.
ALLOWED_ACCURACY_LEVELS = (0, 1, 2, 3, 4)


def _check(field_name: str, value: Any, allowed: tuple) -> None:
    """Raise a ValueError that names the field, the bad value and the allowed ones."""
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(
            f"WeightQuantConfig.{field_name} must be one of {list(allowed)}, got {value!r}"
        )


@dataclass(frozen=True)
class WeightQuantConfig:
    """Block-wise weight-only quantization along the input dimension K.

    `symmetric=True` stores no zero points (the kernel's implicit 2**(bits-1) is used);
    `symmetric=False` stores one unsigned zero point per block (float zero points, which
    `MatMulNBits` also takes, run ~14x slower in ONNX Runtime 1.32's CPU kernel: BENCHMARKS.md,
    "Built but unreachable"). `accuracy_level` is not used by `quantize` but by the
    `MatMulNBits` node: 4 (int8 activations) is the fast CPU path, and for 8-bit weights the
    only fast one (levels 0-3 measured 40-90x slower).
    """

    bits: int = 4
    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4

    def __post_init__(self) -> None:
        _check("bits", self.bits, ALLOWED_BITS)
        _check("block_size", self.block_size, ALLOWED_BLOCK_SIZES)
        if not isinstance(self.symmetric, bool):
            raise ValueError(
                f"WeightQuantConfig.symmetric must be one of [True, False], got {self.symmetric!r}"
            )
        _check("accuracy_level", self.accuracy_level, ALLOWED_ACCURACY_LEVELS)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict for the manifest."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightQuantConfig:
        """Inverse of `to_dict`; unknown keys are an error so a typo cannot pass silently."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"WeightQuantConfig got unknown field(s) {unknown}; allowed: {sorted(known)}"
            )
        return cls(**data)


@dataclass(frozen=True)
class TokenInt8Config:
    """int8 weights with one scale per output channel, multiplied by activations quantized to
    int8 per token at run time (ONNX `MatMulInteger`, ONNX Runtime's VNNI/AMX QGEMM).

    Unlike `MatMulNBits`, whose int4 kernel costs 2-4x more for 8 tokens than for one, this
    kernel reads the weights once for a whole step, so 8 tokens cost about what one does: the
    layout that makes speculative verification and prompts cheap. Per-token scales keep every
    row exact in integers, so a token's result does not depend on the others in its step.
    """

    kind: str = "int8-rows"

    def __post_init__(self) -> None:
        if self.kind != "int8-rows":
            raise ValueError(f"TokenInt8Config.kind must be 'int8-rows', got {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
