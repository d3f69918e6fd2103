"""Speculative decoding: a cheap draft proposes tokens, the target verifies them in one pass.

>>> import edge
>>> m = edge.load("qwen2.5-coder-1.5b", draft="qwen2.5-coder-0.5b")  # doctest: +SKIP
>>> m = edge.load("qwen2.5-coder-1.5b", draft="lookup")  # no draft model  # doctest: +SKIP
>>> tree = SpeculativeConfig(tree=TreeConfig(max_nodes=16))  # token trees, one pass each
>>> m = edge.load("smollm2-135m", draft="lookup", speculative=tree)  # doctest: +SKIP
"""

from edge.speculative.controller import SpeculativeConfig
from edge.speculative.decoder import SpeculativeDecoder
from edge.speculative.drafts import (
    ChainedDraft,
    Draft,
    DraftSource,
    LookupConfig,
    LookupDraft,
    ModelDraft,
)
from edge.speculative.pairing import check_same_tokenizer
from edge.speculative.token_tree import TreeConfig

__all__ = [
    "ChainedDraft",
    "Draft",
    "DraftSource",
    "LookupConfig",
    "LookupDraft",
    "ModelDraft",
    "SpeculativeConfig",
    "SpeculativeDecoder",
    "TreeConfig",
    "check_same_tokenizer",
]
