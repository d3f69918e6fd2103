"""One target pass over a token tree (edge/tree_attention.py): each node's logits equal a
chain pass over its path bit for bit, plain steps are unchanged by the rewritten graphs, and
the committed path's keys/values are those plain decoding would hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.engine import Engine, EngineConfig
from edge.errors import ConfigError, PackageError
from edge.package import open_package
from edge.tree_attention import add_tree_inputs

# node:    0  1  2   3  4  5   (0 is the pending token; 0-1-2 is fed first, as a chain)
TOKENS = [5, 9, 11, 17, 23, 9]
PARENTS = [-1, 0, 1, 0, 3, 1]
PREFIX = 3  # nodes 0..2 are fed in path order: computed exactly as a chain computes them


def _path(node: int) -> list[int]:
    path = [node]
    while PARENTS[path[-1]] >= 0:
        path.append(PARENTS[path[-1]])
    return path[::-1]


def _engine(package: Path, tree: bool) -> Engine:
    config = EngineConfig(threads=1, max_context=64, tree_verify=tree)
    return Engine(open_package(package), config, progress=False)


@pytest.fixture(scope="module")
def w8a8_tree_target(target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from exporters.export import ExportConfig, quantize_package

    out = tmp_path_factory.mktemp("w8a8-tree") / "pkg"
    return quantize_package(target, out, ExportConfig(quant="w8a8"), progress=False)


@pytest.mark.parametrize("quant", ["fp32", "w8a8"])
def test_a_tree_pass_equals_chain_passes_and_commits_plain_keys(
    quant: str, target: Path, w8a8_tree_target: Path, spec_prompt_ids: list[int]
) -> None:
    package = target if quant == "fp32" else w8a8_tree_target
    tree, chain = _engine(package, True), _engine(package, False)
    prompt = spec_prompt_ids[:12]
    # plain steps through the rewritten graphs: bit for bit the unrewritten ones'
    np.testing.assert_array_equal(tree.prefill(prompt), chain.prefill(prompt))
    np.testing.assert_array_equal(tree.decode(3), chain.decode(3))
    base = tree.position
    logits = tree.verify_tree(TOKENS, PARENTS)
    assert logits.shape[0] == len(TOKENS) and tree.position == base + len(TOKENS)
    for node in range(len(TOKENS)):
        path = _path(node)
        chain.rewind(base)
        fed = [TOKENS[i] for i in path] + [0]  # a pass of one token computes on another path
        expected = chain.verify(fed)[len(path) - 1]
        if node < PREFIX:
            np.testing.assert_array_equal(logits[node], expected, err_msg=f"node {node}")
        else:  # it attends across masked siblings: its sums run in another order
            np.testing.assert_allclose(logits[node], expected, atol=1e-4, err_msg=f"node {node}")
    for kept, exact in (([0, 3, 4], False), ([0, 1, 2], True)):
        tree.rewind(base)
        tree.verify_tree(TOKENS, PARENTS)
        tree.commit_tree(base, kept)
        assert tree.position == base + len(kept)
        chain.rewind(base)
        chain.verify([TOKENS[i] for i in kept])
        ours, theirs = tree.decode(7), chain.decode(7)
        if exact:
            np.testing.assert_array_equal(ours, theirs)
            for k, k_chain in zip(tree.cache.keys, chain.cache.keys):
                np.testing.assert_array_equal(
                    k[:, :, : tree.position], k_chain[:, :, : tree.position]
                )
        else:
            np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_trees_are_refused_where_they_cannot_run(target: Path) -> None:
    plain = _engine(target, False)
    with pytest.raises(ConfigError, match="tree_verify"):
        plain.verify_tree([1, 2], [-1, 0])
    engine = _engine(target, True)
    engine.prefill([1, 2, 3])
    with pytest.raises(ValueError, match="earlier token"):
        engine.verify_tree([1, 2, 3], [-1, 2, 0])
    with pytest.raises(ValueError, match="root"):
        engine.verify_tree([1, 2], [0, 0])
    package = open_package(target)
    head = next(p for p in package.manifest.parts if p.kind == "head")
    with pytest.raises(PackageError, match="GroupQueryAttention"):
        add_tree_inputs(package.graph_bytes(head), "part head")


@pytest.mark.parametrize(
    ("attributes", "needle"),
    [({"do_rotary": 0}, "rotated outside"), ({"do_rotary": 1, "local_window_size": 4}, "window")],
)
def test_attention_that_cannot_take_tree_positions_is_refused(
    attributes: dict[str, int], needle: str
) -> None:
    """Keys rotated before the attention op (Gemma 3's local layers) or a sliding window:
    positions and masks fed to the op would not reach them, so the load says so."""
    from onnx import TensorProto, helper

    names = ["qkv", "", "", "pk", "pv", "seqlens", "total", "cos", "sin"]
    node = helper.make_node(
        "GroupQueryAttention",
        names,
        ["out", "k", "v"],
        domain="com.microsoft",
        num_heads=2,
        kv_num_heads=1,
        **attributes,
    )
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names if n]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node.output]
    model = helper.make_model(helper.make_graph([node], "g", inputs, outputs))
    with pytest.raises(PackageError, match=needle):
        add_tree_inputs(model.SerializeToString(), "part block.0")
