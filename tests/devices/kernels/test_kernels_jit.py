"""The JIT compiles for this CPU with AMX off, narrows to 8 or 4 lanes on request, and keeps
every compiled module independent (an engine owns and frees its target machine)."""

from __future__ import annotations

import ctypes
import gc

import pytest
from llvmlite import ir

from devices.kernels.jit import CompiledModule, feature_string, host_target, vector_shape


def add_one_module(name: str) -> ir.Module:
    module = ir.Module(name=name)
    i64 = ir.IntType(64)
    fn = ir.Function(module, ir.FunctionType(i64, [i64]), "add_one")
    builder = ir.IRBuilder(fn.append_basic_block())
    builder.ret(builder.add(fn.args[0], ir.Constant(i64, 1)))
    return module


def call_add_one(module: CompiledModule, value: int) -> int:
    return ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.c_int64)(module.address("add_one"))(value)


def test_modules_outlive_each_other() -> None:
    target = host_target()
    first = CompiledModule(add_one_module("first"), target)
    second = CompiledModule(add_one_module("second"), target)
    del first
    gc.collect()  # frees the first engine and its target machine
    third = CompiledModule(add_one_module("third"), target)
    assert call_add_one(second, 41) == 42 and call_add_one(third, 1) == 2


def test_amx_is_never_enabled() -> None:
    features = feature_string({"amx-tile": True, "amx-int8": True, "avx512f": True}, 16)
    assert "-amx-tile" in features and "-amx-int8" in features and "+avx512f" in features
    assert "-prefer-256-bit" in features  # keep our 512-bit vectors whole
    assert not any(f.startswith("+amx") for f in host_target().features.split(","))


@pytest.mark.parametrize(
    ("features", "machine", "shape"),
    [
        ({"avx512f", "avx2"}, "x86_64", (16, 32)),
        ({"avx2", "fma"}, "x86_64", (8, 16)),
        ({"sse4.2"}, "x86_64", (4, 16)),
        ({"neon"}, "aarch64", (4, 32)),
    ],
)
def test_vector_width_follows_the_features(features: set, machine: str, shape: tuple) -> None:
    assert vector_shape(features, machine) == shape


def test_narrowed_targets_drop_wider_extensions() -> None:
    for lanes in (8, 4):
        target = host_target(lanes)
        if target.lanes < lanes:  # NEON: 4 lanes at most, nothing wider to drop
            continue
        enabled = {f[1:] for f in target.features.split(",") if f.startswith("+")}
        assert target.lanes == lanes and not any(f.startswith("avx512") for f in enabled)
        if lanes == 4:
            assert not any(f.startswith("avx") for f in enabled)
    with pytest.raises(ValueError, match="max_lanes"):
        host_target(2)
