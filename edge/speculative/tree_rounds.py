"""The speculative decoder's tree half: which tree a round verifies, and what it learns.

A round asks the controller whether trees pay (kind "tree": switched off, and probed again
now and then, like any draft kind, when its measured rounds commit fewer tokens per second
than plain steps), builds the best-first tree of free proposals, and cuts it to the size the
measured cost of a target pass of that size pays for. After the pass it learns the hit rates
of the proposals the target reached, and every pass the target runs (plain, chain or tree)
feeds the recycling table with the target's own top candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge.errors import ConfigError
from edge.runner import Runner
from edge.speculative.controller import DraftController
from edge.speculative.token_tree import TokenTree, TreeConfig
from edge.speculative.tree_drafts import TreeDraft, TreePolicy

TREE_KEY = "tree"


class TreeSpeculation:
    def __init__(self, config: TreeConfig, target: Runner, controller: DraftController) -> None:
        if getattr(target, "tree", None) is None:
            raise ConfigError(
                "tree speculation needs a target loaded with EngineConfig(tree_verify=True) "
                "(edge.load and Model do this when SpeculativeConfig.tree is set)"
            )
        self.config, self.controller = config, controller
        self.exact = not target.rounds_by_step() if config.exact is None else config.exact
        self.draft = TreeDraft(config)
        self.policy = TreePolicy(controller.config.smoothing)
        self.carried = 0  # passes whose kept path went on past what they could commit exactly

    def choose(
        self, history: Sequence[int], room: int, carry: Sequence[int] = ()
    ) -> TokenTree | None:
        """The tree to verify next, fed depth first, or None (trees are off, or none is
        predicted to pay). `carry`: what the last pass kept but could not commit exactly."""
        controller = self.controller
        plain = controller.plain_step.value
        if plain is None or not controller.next_k(TREE_KEY):
            return None
        tree = self.draft.propose(history, min(room, self.config.max_nodes), carry)
        if not tree.drafted:
            return None
        slope = controller.verify_slope.value
        slope = controller.PRIOR_VERIFY_SLOPE if slope is None else slope
        average = controller.draft_token.get(TREE_KEY)
        per_node = average.value if average is not None and average.value is not None else 0.0
        # not adaptive: the whole budget every pass, as a fixed k drafts k every round
        adaptive = controller.config.adaptive
        n = self.policy.size(tree, plain, slope, per_node) if adaptive else tree.drafted
        return tree.head(n).preorder() if n else None

    def observe(self, tokens: Sequence[int], logits: np.ndarray) -> None:
        """The target's logits [len(tokens), V], row i after tokens[i]: recycled drafts."""
        for token, row in zip(tokens, logits):
            self.draft.recycler.observe(token, row)

    def record_pass(self, tokens: int, seconds: float) -> None:
        self.policy.record(tokens, seconds)

    def learn(self, tree: TokenTree, path: Sequence[int], logits: np.ndarray) -> None:
        self.draft.rates.learn(tree, path)
        self.observe([tree.tokens[i] for i in path], logits[list(path)])
