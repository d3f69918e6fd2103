"""A token tree and which of its paths the target keeps.

Node 0 is the pending token (the root: its logits are not computed yet); every other node is
a drafted token one position after its parent. The target verifies the whole tree in one pass
(`Runner.verify_tree`) and walks it from the root: at each node it makes its own choice from
that node's logits, exactly as plain decoding would at that position (`Sampler.choose`:
argmax, or Gumbel-max with noise keyed by (seed, position)), and descends into the child
holding that token if there is one. So the committed text is plain decoding's, greedy or
sampled with a seed, whatever the tree held; the tree only changes how many tokens a pass
commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from edge.errors import ConfigError
from edge.sampling import Sampler


@dataclass(frozen=True)
class TreeConfig:
    """`max_nodes`: the most drafted tokens one pass verifies; each pass takes as many as
    the measured cost of a pass of that size pays for (`TreePolicy`). `branches`: earlier
    occurrences of the text's last n-gram whose continuations are offered; `depth`: their
    longest continuation; `recycle_k`: the target's own top candidates kept per token.

    `exact`: commit only what a chain pass would have computed bit for bit (see
    `exact_prefix`), carrying the rest of the kept path into the next pass as its first
    chain; False commits the whole kept path at once (its deeper rows summed in another
    order, ~1e-7 apart: equal text up to near-ties). None: exact unless the target rounds
    by step anyway (int4 at accuracy_level 4 without --exact, ~0.3 logits apart)."""

    max_nodes: int = 16
    branches: int = 4
    depth: int = 12  # as long as a chain draft may be (SpeculativeConfig.max_draft)
    recycle_k: int = 4
    exact: bool | None = None

    def __post_init__(self) -> None:
        for name, low, high in (
            ("max_nodes", 1, 63),
            ("branches", 1, 16),
            ("depth", 1, 32),
            ("recycle_k", 0, 16),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"tree {name}={value!r}; must be an integer in {low}..{high}")
        if self.exact not in (None, True, False):
            raise ConfigError(f"tree exact={self.exact!r}; must be True, False or None")


@dataclass
class TokenTree:
    """Nodes in an order where every parent comes before its children."""

    tokens: list[int]
    parents: list[int]
    kinds: list[str] = field(default_factory=list)  # which proposal made each node ("" root)
    scores: list[float] = field(default_factory=list)  # its estimated chance of being kept

    @property
    def drafted(self) -> int:
        return len(self.tokens) - 1

    def children(self) -> list[list[int]]:
        out: list[list[int]] = [[] for _ in self.tokens]
        for node, parent in enumerate(self.parents[1:], start=1):
            out[parent].append(node)
        return out

    def head(self, n: int) -> TokenTree:
        """The first n drafted nodes (still a tree: parents come first)."""
        m = n + 1
        return TokenTree(self.tokens[:m], self.parents[:m], self.kinds[:m], self.scores[:m])

    def preorder(self) -> TokenTree:
        """The same tree fed depth first, the likelier child first: its likeliest path is
        then the first nodes fed, which a pass computes exactly as a chain (`exact_prefix`)."""
        children = self.children()
        order, stack = [], [0]
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(sorted(children[node], key=lambda c: self.scores[c]))
        index = {old: new for new, old in enumerate(order)}
        return TokenTree(
            [self.tokens[i] for i in order],
            [-1, *(index[self.parents[i]] for i in order[1:])],
            [self.kinds[i] for i in order],
            [self.scores[i] for i in order],
        )


def exact_prefix(path: Sequence[int]) -> int:
    """How many of the kept path's nodes were fed first, in order (0, 1, ..., m-1). Their
    rows attend to no masked key, so a tree pass computes them bit for bit as a chain pass
    does, and their keys/values already sit where plain decoding puts them. A deeper node
    attends across masked siblings, which reorders its float sums (~1e-7)."""
    m = 0
    while m < len(path) and path[m] == m:
        m += 1
    return m


def accept_tree(
    sampler: Sampler, logits: np.ndarray, tree: TokenTree, history: Sequence[int]
) -> tuple[list[int], int]:
    """(the kept path's nodes, root first; the target's next token). logits [S, V], one row
    per node; `history` ends with the root's token, so positions are absolute."""
    children = tree.children()
    context = list(history)
    node, path = 0, [0]
    while True:
        choice = sampler.choose(logits[node], context, len(context))
        node = next((c for c in children[node] if tree.tokens[c] == choice), -1)
        if node < 0:
            return path, choice
        path.append(node)
        context.append(choice)
