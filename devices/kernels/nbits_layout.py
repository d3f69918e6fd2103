"""What one compiled `MatMulNBits` kernel is specialised for, and which variants a CPU runs."""

from __future__ import annotations

from dataclasses import dataclass

ZERO_POINT_KINDS = ("none", "uint8")
# Activation formats: "fp32" multiplies the float x as given (ORT's accuracy_level 0 math);
# "int16" rounds x per block to 15-bit integers (error <= block max |x| / 32512, ~100x finer
# than ORT's accuracy_level 4) and multiplies with AVX-512 VNNI int8 dot products, two per x.
ACTIVATION_KINDS = ("fp32", "int16")
VNNI_GROUP_BYTES = 64  # code bytes per VNNI step: one 512-bit register


@dataclass(frozen=True)
class NBitsLayout:
    """A kernel variant; K, N and M stay run-time arguments.

    `lanes` is the float vector width; `permute` decodes nibbles with AVX-512 `vpermps` table
    lookups (one instruction instead of a mask and a conversion); `activations="int16"` needs
    AVX-512 VNNI.
    """

    bits: int
    block_size: int
    zero_points: str  # "none" (implicit 2**(bits-1)) or "uint8" (packed like B)
    lanes: int
    permute: bool = False
    activations: str = "fp32"

    def __post_init__(self) -> None:
        _check("bits", self.bits, (4, 8))
        _check("block_size", self.block_size, (16, 32, 64, 128, 256))
        _check("zero_points", self.zero_points, ZERO_POINT_KINDS)
        _check("activations", self.activations, ACTIVATION_KINDS)
        fp32 = self.activations == "fp32"
        if self.lanes not in (4, 8, 16) or (fp32 and self.lanes > self.block_bytes):
            raise ValueError(
                f"NBitsLayout.lanes must be 4, 8 or 16 and (fp32) at most the "
                f"{self.block_bytes} bytes of a block, got {self.lanes!r}"
            )
        if (self.permute or self.activations == "int16") and self.lanes != 16:
            raise ValueError(f"NBitsLayout permute / int16 need 16 lanes, got {self.lanes}")

    @property
    def block_bytes(self) -> int:
        return self.block_size * self.bits // 8

    @property
    def chunks_per_block(self) -> int:
        """fp32 path: vector loads of `lanes` code bytes per block."""
        return self.block_bytes // self.lanes

    @property
    def codes_per_chunk(self) -> int:
        return self.lanes * 8 // self.bits

    @property
    def codes_per_group(self) -> int:
        """int16 path: codes in one 64-byte VNNI step (128 for 4 bits, 64 for 8)."""
        return VNNI_GROUP_BYTES * 8 // self.bits

    @property
    def x_parts(self) -> int:
        """int16 path: 64-byte int8 x vectors per group (high and low halves of x; for 4 bits
        each again split into the even-k and odd-k codes)."""
        return 4 if self.bits == 4 else 2


def _check(name: str, value: object, allowed: tuple) -> None:
    if isinstance(value, bool) or value not in allowed:
        raise ValueError(f"NBitsLayout.{name} must be one of {list(allowed)}, got {value!r}")


def kernel_lanes(bits: int, block_size: int, host_lanes: int) -> int:
    """The host's vector width, narrowed so one vector load never spans two blocks."""
    return min(host_lanes, block_size * bits // 8)


def _x86_avx512(features: str, triple: str, lanes: int) -> bool:
    return lanes == 16 and triple.startswith("x86_64") and "+avx512f" in features.split(",")


def can_permute(features: str, triple: str, lanes: int) -> bool:
    """Whether `vpermps` on 16 floats is available (x86 with AVX-512F)."""
    return _x86_avx512(features, triple, lanes)


def can_vnni(features: str, triple: str, lanes: int) -> bool:
    """Whether the int16 path's AVX-512 VNNI (`vpdpbusd`) and byte-masked loads are there."""
    enabled = set(features.split(","))
    return _x86_avx512(features, triple, lanes) and {"+avx512vnni", "+avx512bw"} <= enabled
