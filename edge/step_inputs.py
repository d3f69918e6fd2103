"""What a step takes, checked before any work: token ids against the vocabulary, a thread
count against the CPUs this process may use, a prompt cut into steps. The engine's inputs,
kept apart from the engine so the CLI, the server and cluster workers can check them without
loading it.
"""

from __future__ import annotations

import operator
import os
from collections.abc import Callable, Sequence

import numpy as np

from edge import format as fmt
from edge.errors import ConfigError, InvalidTokenError


def prefill_in_chunks(
    ids: np.ndarray,
    chunk: int,
    all_logits: bool,
    step: Callable[[np.ndarray, bool], np.ndarray | None],
) -> np.ndarray:
    """Run `ids` in steps of at most `chunk` tokens; `step(ids, want_logits)`. Logits [S, V]
    for every position when `all_logits`, else [1, V] for the last (only it is computed)."""
    out = []
    for start in range(0, len(ids), chunk):
        want = all_logits or start + chunk >= len(ids)
        logits = step(ids[start : start + chunk], want)
        if want:
            out.append(logits)
    return np.concatenate(out) if all_logits else out[-1]


def min_step_tokens(manifest: fmt.Manifest) -> int:
    """2 for packages that round activations to int8 per token (w8a8), else 1.

    ONNX Runtime's GroupQueryAttention computes a one-token step on another code path than a
    longer one: 1e-7 apart, while any two longer steps agree row for row (measured). Rounding
    each token's activations to int8 turns such a difference into whole-unit logit changes now
    and then. Stepping at least two tokens (the second a pad, whose cache slot the next step
    overwrites) makes a token's logits independent of how many tokens share its step, so
    speculative verification equals plain decoding bit for bit; it costs ~5% of a step there.
    """
    return 2 if manifest.quant.per_token else 1


def usable_threads() -> int:
    """The most threads that run at once here: CPUs in this process's affinity mask, capped by
    a cgroup CPU quota (a container's share), not the host's count."""
    from pathlib import Path

    from devices.cpu_info import usable_cores

    return usable_cores(Path("/"), os.cpu_count() or 1)


def physical_cores() -> int:
    """The default thread count: one per physical core, within what this process may use."""
    import psutil

    return max(1, min(psutil.cpu_count(logical=False) or os.cpu_count() or 1, usable_threads()))


def check_threads(threads: int | None, what: str = "threads") -> None:
    """More threads than usable CPUs only contend (each ONNX Runtime step waits for the slowest
    thread), so asking for them is refused with the maximum rather than silently slow."""
    if threads is None:
        return
    if threads < 1:
        raise ConfigError(f"{what}={threads}; must be >= 1")
    most = usable_threads()
    if threads > most:
        raise ConfigError(
            f"{what}={threads}; this machine lets edge use at most {most} (its usable CPU cores)"
        )


def checked_token(value: object, vocab_size: int) -> int:
    """One token id, checked without allocating (decode's per-token path)."""
    try:
        if isinstance(value, bool):
            raise TypeError
        token = operator.index(value)  # ints and numpy integers, not floats
    except TypeError:
        raise InvalidTokenError(f"a token id must be an integer, got {value!r:.40}") from None
    if not 0 <= token < vocab_size:
        raise InvalidTokenError(
            f"token id {token} is outside this model's vocabulary [0, {vocab_size})"
        )
    return token


def token_array(token_ids: Sequence[int] | np.ndarray, vocab_size: int) -> np.ndarray:
    """The ids as int64 [S], each checked against the vocabulary: an id outside it would index
    past the embedding table (an error on one backend, garbage or a fault on another)."""
    ids = np.asarray(token_ids)
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise InvalidTokenError(f"token ids must be integers, got {ids.dtype} values")
    ids = ids.astype(np.int64, copy=False).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        bad = int(ids[(ids < 0) | (ids >= vocab_size)][0])
        raise InvalidTokenError(
            f"token id {bad} is outside this model's vocabulary [0, {vocab_size})"
        )
    return ids
