"""Token trees verified in one pass give exactly the target's own text: greedy, and sampled
with a seed, on fp32 and w8a8 targets and on int4 with exact=True (the promises chains make),
with trees that are mostly kept deep inside a branch (a carried path) and often rejected."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import edge
from edge.model import Model
from edge.speculative import LookupDraft, SpeculativeConfig
from edge.speculative.token_tree import TreeConfig

N = 40
TREE = SpeculativeConfig(adaptive=False, tree=TreeConfig(max_nodes=12, branches=3))


def _tokens(model: Model, ids: list[int], **kwargs: Any) -> tuple[list[int], Any]:
    out = list(model.stream(ids, max_tokens=N, ignore_eos=True, **kwargs))
    return [r.token for r in out], out[-1].speculation


@pytest.fixture(scope="module")
def quantized(target: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from exporters.export import ExportConfig, quantize_package

    root = tmp_path_factory.mktemp("tree-quant")
    return {
        quant: quantize_package(
            target, root / quant, ExportConfig(quant=quant, **extra), progress=False
        )
        for quant, extra in (("w8a8", {}), ("int4", {"accuracy_level": 4}))
    }


@pytest.mark.parametrize("quant", ["fp32", "w8a8"])
def test_tree_greedy_equals_plain_greedy(
    quant: str,
    target: Path,
    quantized: dict[str, Path],
    load_tiny: Callable[..., Model],
    spec_prompt_ids: list[int],
) -> None:
    """A first request teaches the recycling table the target's choices; in the second, the
    tree holds them one rank below a wrong candidate made to score higher, so the kept path
    runs through later-fed branches (committed exactly up to there, the rest carried)."""
    package = target if quant == "fp32" else quantized[quant]
    ids = spec_prompt_ids
    plain, _ = _tokens(load_tiny(package), ids)
    model = load_tiny(package, draft=LookupDraft(), speculative=TREE)
    assert _tokens(model, ids)[0] == plain
    trees = model.speculative.trees
    trees.draft.rates.hits.update(recycle0=1.0, recycle1=40.0)
    trees.draft.rates.trials.update(recycle0=40.0, recycle1=40.0)
    tokens, stats = _tokens(model, ids)
    assert tokens == plain
    assert trees.carried > 0 and stats.accepted > 0 and stats.tokens_per_pass > 1.2


def test_whole_path_commits_keep_the_text(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int]
) -> None:
    """exact=False: kept paths through later-fed branches are committed whole, their keys
    and values moved into place; the fp32 text is still plain greedy's."""
    plain, _ = _tokens(load_tiny(target), spec_prompt_ids)
    whole = SpeculativeConfig(adaptive=False, tree=TreeConfig(max_nodes=12, exact=False))
    model = load_tiny(target, draft=LookupDraft(), speculative=whole)
    _tokens(model, spec_prompt_ids)
    model.speculative.trees.draft.rates.hits.update(recycle0=1.0, recycle1=40.0)
    model.speculative.trees.draft.rates.trials.update(recycle0=40.0, recycle1=40.0)
    tokens, stats = _tokens(model, spec_prompt_ids)
    assert tokens == plain and model.speculative.trees.carried == 0
    assert stats.tokens_per_pass > 1.5


def test_tree_exact_on_int4(quantized: dict[str, Path], spec_prompt_ids: list[int]) -> None:
    def run(**kwargs: Any) -> list[tuple[int, float]]:
        model = edge.load(quantized["int4"], threads=1, max_context=96, progress=False, **kwargs)
        out = model.stream(spec_prompt_ids, max_tokens=N, ignore_eos=True)
        return [(r.token, r.logprob) for r in out]

    assert run(exact=True, draft="lookup", speculative=TREE) == run(exact=True)


def test_tree_sampling_with_a_seed_equals_plain_sampling(
    target: Path, load_tiny: Callable[..., Model], spec_prompt_ids: list[int]
) -> None:
    sampling = dict(temperature=0.8, top_p=0.9, seed=3)
    plain, _ = _tokens(load_tiny(target), spec_prompt_ids, **sampling)
    tokens, stats = _tokens(
        load_tiny(target, draft=LookupDraft(), speculative=TREE), spec_prompt_ids, **sampling
    )
    assert tokens == plain and stats.drafted > 0


@pytest.mark.slow  # ~10-17 s on 2 shared cores: over this file's share of CI's time
def test_smollm2_tree_on_repetitive_code(smollm2_package: Path) -> None:
    """The real SmolLM2-135M fp32, lookup trees on code that repeats itself: plain greedy's
    64 tokens (the same engine decoding plainly), several committed per pass."""
    from edge.generate import GenerationConfig, stream_tokens

    model = edge.load(
        str(smollm2_package),
        progress=False,
        max_context=256,
        draft="lookup",
        speculative=SpeculativeConfig(adaptive=False, tree=TreeConfig(max_nodes=8)),
    )
    ids = model.tokenizer.encode(
        'config = {\n    "name": "alpha",\n    "size": 1,\n    "enabled": True,\n}\n'
        'config_beta = {\n    "name": "beta",\n'
    )
    plain = GenerationConfig(max_tokens=64, ignore_eos=True)
    expected = [r.token for r in stream_tokens(model.engine, model.tokenizer, ids, plain)]
    responses = list(model.stream(ids, max_tokens=64, ignore_eos=True))
    assert [r.token for r in responses] == expected
    assert responses[-1].speculation.tokens_per_pass > 1.5
