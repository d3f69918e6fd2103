"""Token trees without a model: best-first growth from lookup continuations and recycled
candidates, the size a pass takes from measured costs, depth-first feeding, the kept path,
and the errors bad settings get."""

from __future__ import annotations

import numpy as np
import pytest

from edge.errors import ConfigError
from edge.sampling import Sampler, SamplingConfig
from edge.speculative import SpeculativeConfig
from edge.speculative.token_tree import TokenTree, TreeConfig, accept_tree, exact_prefix
from edge.speculative.tree_drafts import MultiLookup, Recycler, TreeDraft, TreePolicy


def test_lookup_offers_every_recent_continuation() -> None:
    lookup = MultiLookup(max_ngram=2, branches=3)
    history = [1, 2, 3, 9, 1, 2, 4, 8, 1, 2, 5, 7, 1, 2]
    chains = lookup.continuations(history, depth=2)
    # "1 2" was followed by 5, 4 and 3 (most recent first); "2" alone adds nothing new
    assert chains == [("ngram2", [5, 7]), ("ngram2", [4, 8]), ("ngram2", [3, 9])]


def test_recycler_keeps_the_targets_top_candidates_in_order() -> None:
    recycler = Recycler(k=2)
    recycler.observe(7, np.array([0.0, 3.0, 1.0, 2.0]))
    assert recycler.successors(7).tolist() == [1, 3]
    assert recycler.successors(8).tolist() == []


def test_tree_grows_best_first_and_merges_repeated_offers() -> None:
    draft = TreeDraft(TreeConfig(max_nodes=6, branches=2, depth=3, recycle_k=2))
    draft.recycler.observe(4, np.array([0.0, 0.0, 0.0, 0.0, 0.0, 2.0, 1.0]))  # after 4: 5, 6
    tree = draft.propose([4, 5, 6, 1, 4], max_nodes=6)  # lookup: 4 -> 5 6 1; recycle: 5, 6
    assert tree.tokens[0] == 4 and tree.parents[0] == -1
    first = [n for n in range(1, len(tree.tokens)) if tree.parents[n] == 0]
    assert sorted(tree.tokens[n] for n in first) == [5, 6]  # 5 offered twice, kept once
    assert all(tree.scores[n] >= tree.scores[n + 1] for n in range(len(tree.tokens) - 1))
    assert tree.drafted <= 6


def test_preorder_feeds_the_likeliest_path_first() -> None:
    tree = TokenTree([0, 1, 2, 3, 4], [-1, 0, 0, 2, 1], ["", "a", "a", "a", "a"])
    tree.scores = [1.0, 0.6, 0.3, 0.2, 0.5]
    ordered = tree.preorder()
    assert ordered.tokens == [0, 1, 4, 2, 3] and ordered.parents == [-1, 0, 1, 0, 3]


def test_the_kept_path_follows_the_targets_choices() -> None:
    tree = TokenTree([0, 1, 2, 3], [-1, 0, 0, 2])
    logits = np.zeros((4, 5), np.float32)
    logits[0, 2] = logits[2, 3] = logits[3, 4] = 1.0  # the target picks 2, then 3, then 4
    sampler = Sampler(SamplingConfig(temperature=0.0), 5)
    path, token = accept_tree(sampler, logits, tree, [0])
    assert (path, token) == ([0, 2, 3], 4)
    assert exact_prefix(path) == 1 and exact_prefix([0, 1, 2]) == 3


def test_the_pass_size_follows_measured_costs() -> None:
    tree = TokenTree([0, 1, 2, 3], [-1, 0, 1, 2], scores=[1.0, 0.9, 0.8, 0.1])
    policy = TreePolicy()
    assert policy.size(tree, plain=1.0, slope=0.0) == 3  # free passes: everything
    assert policy.size(tree, plain=1.0, slope=2.0) == 0  # dear passes: a plain step
    policy.record(3, 1.2)  # measured: a 3-token pass costs 1.2 plain steps
    policy.record(4, 3.0)
    assert policy.size(tree, plain=1.0, slope=2.0) == 2


@pytest.mark.parametrize(
    "bad", [dict(max_nodes=0), dict(max_nodes=64), dict(branches=0), dict(depth=True)]
)
def test_bad_tree_settings_are_refused(bad: dict) -> None:
    with pytest.raises(ConfigError, match="tree"):
        TreeConfig(**bad)


def test_a_tree_config_must_be_one() -> None:
    with pytest.raises(ConfigError, match="TreeConfig"):
        SpeculativeConfig(tree=16)  # type: ignore[arg-type]
