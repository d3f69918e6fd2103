"""Named quantization schemes: which weights get which `WeightQuantConfig`.

A scheme is what a user picks (`--quant int4`); it decides, per weight role, the bits, block
size and symmetry. Written into the manifest so a package says exactly how it was made.
"""

from __future__ import annotations

import fnmatch
from dataclasses import asdict, dataclass
from typing import Any

from quant.config import TokenInt8Config, WeightQuantConfig

SCHEME_NAMES = ("int8", "int4", "int4-mixed", "w8a8")
RoleConfig = WeightQuantConfig | TokenInt8Config


@dataclass(frozen=True)
class QuantScheme:
    """Per-role configs. Roles: "linear" (block matmuls), "head" (output matrix), "embed".

    A role is block-quantized for `MatMulNBits` (`WeightQuantConfig`) or int8 rows with per-token
    int8 activations (`TokenInt8Config`, linears and head only: the embedding is a lookup).

    `sensitive` lists glob patterns of linear names (e.g. "blk.0.ffn_down") quantized with
    `sensitive_config` instead of `linear`. `embed=None` keeps the embedding in float32.
    """

    name: str
    linear: RoleConfig
    head: RoleConfig
    embed: WeightQuantConfig | None
    sensitive_config: WeightQuantConfig | None = None
    sensitive: tuple[str, ...] = ()

    def for_linear(self, name: str) -> RoleConfig:
        if self.sensitive_config and any(fnmatch.fnmatch(name, p) for p in self.sensitive):
            return self.sensitive_config
        return self.linear

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantScheme:
        def config(value: dict[str, Any] | None) -> RoleConfig | None:
            if value is None:
                return None
            return TokenInt8Config(**value) if "kind" in value else WeightQuantConfig(**value)

        return cls(
            name=data["name"],
            linear=config(data["linear"]),
            head=config(data["head"]),
            embed=config(data["embed"]),
            sensitive_config=config(data.get("sensitive_config")),
            sensitive=tuple(data.get("sensitive", ())),
        )


def sensitive_layers(num_layers: int) -> tuple[str, ...]:
    """The layers int4-mixed keeps at int8: the first and last two blocks' down and V/QKV
    projections, where quantization error hurts perplexity most (llama.cpp's Q4_K_M spends its
    extra bits on the same ffn_down / attn_v tensors)."""
    ends = sorted({0, 1, num_layers - 2, num_layers - 1} & set(range(num_layers)))
    return tuple(f"blk.{i}.{t}" for i in ends for t in ("ffn_down.weight", "attn_qkv.weight"))


def make_scheme(
    name: str,
    num_layers: int,
    *,
    block_size: int = 32,
    accuracy_level: int = 4,
    symmetric: bool = True,
) -> QuantScheme:
    """The scheme behind a user-facing name (see `SCHEME_NAMES`); `symmetric=False` stores a
    zero point per block (closer to asymmetric sources such as GGUF Q4_1, slightly slower).

    "w8a8": every linear and the head as int8 rows x int8 tokens (`TokenInt8Config`), the
    embedding as int8 blocks; a decoded token costs ~1.2x int4's (twice the bytes to read), a
    step of several tokens little more than one (speculative verification, prompts)."""
    if name not in SCHEME_NAMES:
        raise ValueError(f"unknown quantization {name!r}; choose one of {list(SCHEME_NAMES)}")
    int8 = WeightQuantConfig(
        bits=8, block_size=32, symmetric=symmetric, accuracy_level=accuracy_level
    )
    int4 = WeightQuantConfig(
        bits=4, block_size=block_size, symmetric=symmetric, accuracy_level=accuracy_level
    )
    if name == "int8":
        return QuantScheme(name, linear=int8, head=int8, embed=int8)
    if name == "int4":
        return QuantScheme(name, linear=int4, head=int4, embed=int4)
    if name == "w8a8":
        rows = TokenInt8Config()
        return QuantScheme(name, linear=rows, head=rows, embed=int8)
    return QuantScheme(
        name,
        linear=int4,
        head=int8,
        embed=int8,
        sensitive_config=int8,
        sensitive=sensitive_layers(num_layers),
    )
