"""The contract generation, speculation, the CLI and the server rely on: what a runner does.

`Engine` is the one implementation: every way of running a part (ONNX Runtime, OpenVINO, an
NPU, PyTorch, the streamed path under a memory budget) is a Backend it places segments on.
Callers use this protocol, so a remote runner (a cluster coordinator) can stand in.

>>> runner = create_runner(open_package("smollm2-pkg"), EngineConfig())  # doctest: +SKIP
>>> logits = runner.prefill([1, 2, 3])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from edge.format import ModelSpec
from edge.package import Package

if TYPE_CHECKING:
    from devices.backend import Loaded
    from edge.engine import EngineConfig
    from edge.kv_cache import KVSnapshot
    from edge.streaming import StreamConfig


@runtime_checkable
class Runner(Protocol):
    """Runs a package token by token over one KV cache. Not thread-safe."""

    package: Package
    spec: ModelSpec
    max_context: int
    chunk: int  # the most tokens one `verify` takes

    @property
    def position(self) -> int:
        """How many tokens the KV cache holds."""
        ...

    def prefill(
        self, token_ids: Sequence[int] | np.ndarray, all_logits: bool = False
    ) -> np.ndarray:
        """Feed tokens; logits [S, V] for every position, or [1, V] for the last."""
        ...

    def verify(self, token_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        """Logits [S, V] for every fed token, computed as decoding computes them."""
        ...

    def decode(self, token_id: int) -> np.ndarray:
        """Feed one token; its next-token logits [V]."""
        ...

    def verify_tree(
        self, token_ids: Sequence[int] | np.ndarray, parents: Sequence[int]
    ) -> np.ndarray:
        """`verify` over a token tree (node 0 the root, `parents[i]` earlier than i): each
        node's logits [S, V] as a chain pass over its path computes them."""
        ...

    def commit_tree(self, base: int, path: Sequence[int]) -> None:
        """After `verify_tree` at position `base`: keep nodes `path` (root first), drop the rest."""
        ...

    def reset(self) -> None: ...

    def readmit(self) -> list[str]:
        """Between generations: move parts whose device left back onto it once it answers
        again (the cache is then empty); what moved back, in words."""
        ...

    def rewind(self, position: int) -> None: ...

    @property
    def can_snapshot(self) -> bool:
        """Whether `save_prefix`/`restore_prefix` work (the KV cache is in its own arrays)."""
        ...

    def save_prefix(self, n: int) -> KVSnapshot:
        """A copy of the first `n` cached positions and their tokens."""
        ...

    def restore_prefix(self, snapshot: KVSnapshot) -> None:
        """Make the cache hold exactly `snapshot`'s tokens again."""
        ...

    def close(self) -> None:
        """Release threads and buffers the runner holds beyond its arrays."""
        ...

    def cpu_threads(self) -> int | None:
        """The CPU threads it computes with; None when it computes elsewhere (a GPU)."""
        ...

    def rounds_by_step(self) -> bool:
        """Whether a pass over k tokens rounds differently from k one-token steps (int8
        activations quantized per block), so speculation is exact only up to near ties."""
        ...

    def describe(self) -> str:
        """Where it runs, in a line or a few: the placement, or the streaming window."""
        ...

    def loaded_segments(self) -> list[Loaded]:
        """What each backend loaded, in part order (a streamed segment's window, for one)."""
        ...

    def report(self) -> str | None:
        """What a user wants to know after a generation (streaming I/O); None if nothing."""
        ...


def create_runner(
    package: Package, config: EngineConfig | StreamConfig | None = None, progress: bool = True
) -> Runner:
    """The engine for a configuration: a memory budget (`StreamConfig`) places every part on
    the streamed backend, which keeps what does not fit on disk; otherwise `EngineConfig`'s
    placement (by default every part on ONNX Runtime's CPU backend)."""
    from edge.engine import Engine, EngineConfig

    if config is not None and not isinstance(config, EngineConfig):
        config = config.sized_for(package).engine_config(len(package.manifest.parts))
    return Engine(package, config, progress)
