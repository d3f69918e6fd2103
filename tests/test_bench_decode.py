"""bench/bench_decode.py's pure helpers (the benchmark itself needs llama-cpp-python)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from edge.format import PREFILL_INT8_SUFFIXES

_PATH = Path(__file__).resolve().parents[1] / "bench" / "bench_decode.py"
_spec = importlib.util.spec_from_file_location("bench_decode", _PATH)
bd = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_decode", bd)  # dataclasses look their module up
_spec.loader.exec_module(bd)


def test_rotation_moves_each_engine_first_in_turn():
    engines = ["a", "b", "c"]
    orders = [bd.rotation(engines, r) for r in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    assert bd.rotation([], 3) == []


def test_fit_words_takes_the_longest_prefix_within_the_limit():
    def render(text: str) -> list[int]:  # two fixed tokens around one token per word
        return [0, *(1 for _ in text.split()), 0]

    ids = bd.fit_words(render, "one two three four five six", 5)
    assert len(ids) == 5
    assert bd.fit_words(render, "one two", 10) == [0, 1, 1, 0]
    assert bd.fit_words(render, "one two", 2) == [0, 0]


def test_agreement_counts_positions_and_the_common_prefix():
    assert bd.agreement([1, 2, 3, 4], [1, 2, 9, 4]) == (3, 2)
    assert bd.agreement([5] * 40, [5] * 40) == (32, 32)
    assert bd.agreement([1, 2], [3, 2], n=2) == (1, 0)


def _tensor(name: str, nbytes: int):
    return SimpleNamespace(name=name, nbytes=nbytes)


def test_edge_decode_bytes_reads_one_embedding_row_and_skips_prefill_copies():
    parts = [
        SimpleNamespace(kind="embed", tensors=[_tensor("token_embd.gather", 1000 * 10)]),
        SimpleNamespace(
            kind="block",
            tensors=[
                _tensor("blk.0.ffn_down.weight.q4", 500),
                _tensor("blk.0.ffn_down.weight.scales", 50),
                _tensor("blk.0.ffn_down.weight.prefill_int8", 1000),
                _tensor("blk.0.ffn_down.weight.prefill_scale", 40),
            ],
        ),
        SimpleNamespace(kind="head", tensors=[_tensor("token_embd.weight.q8", 7000)]),
    ]
    assert bd.edge_decode_bytes(parts, 1000, PREFILL_INT8_SUFFIXES) == 10 + 550 + 7000


def test_gguf_decode_bytes_counts_the_tied_embedding_as_the_head():
    untied = {"token_embd.weight": 1000 * 8, "output.weight": 4000, "blk.0.attn_q.weight": 300}
    assert bd.gguf_decode_bytes(untied, 1000) == 8 + 4000 + 300
    tied = {"token_embd.weight": 1000 * 8, "blk.0.attn_q.weight": 300}
    assert bd.gguf_decode_bytes(tied, 1000) == 8000 + 300


def test_foreign_cores_subtracts_the_engine_and_never_goes_negative():
    assert bd.foreign_cores(300, 200, 1.0, hz=100) == pytest.approx(1.0)
    assert bd.foreign_cores(190, 200, 1.0, hz=100) == 0.0
    assert bd.foreign_cores(10, 0, 0.0, hz=100) == 0.0


def test_cpu_flags_keeps_the_kernel_relevant_ones():
    text = (
        "processor\t: 0\nmodel name\t: Test CPU\n"
        "flags\t\t: fpu sse avx2 avx512f avx512_vnni amx_tile amx_int8 avx_vnni\n"
        "processor\t: 1\nmodel name\t: Other\nflags\t\t: fpu\n"
    )
    name, flags = bd.cpu_flags(text)
    assert name == "Test CPU"
    assert flags == ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile"]
    assert bd.cpu_flags("") == ("unknown CPU", [])
