"""The engine's run-time knobs (`EngineConfig`) and the default context window."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge.errors import ConfigError
from edge.format import ModelSpec
from edge.kv_cache import KV_DTYPES
from edge.placement import Placement
from edge.prepacked import PrepackedMode, check_mode

DEFAULT_MAX_CONTEXT = 4096
# Without an explicit context the KV cache may take at most this share of the memory available
# now; a small device gets a shorter window (said on the log) instead of running out.
KV_MEMORY_SHARE = 0.25
MIN_DEFAULT_CONTEXT = 256
log = logging.getLogger("edge.engine")


@dataclass(frozen=True)
class EngineConfig:
    """Run-time knobs. `parts_per_session=None` runs each placement segment as one executable,
    or, where the package is large for the memory available, as executables of at most
    `edge.placement.SESSION_BYTES` of weights each (`session_cap`); `placement=None` runs every
    part on ONNX Runtime's CPU backend."""

    max_context: int | None = None
    prefill_chunk: int = 256
    threads: int | None = None
    parts_per_session: int | None = None
    # Run multi-token steps with a package's prefill graphs (int8 kernels) when it has them;
    # off saves their memory on small devices, at the cost of slower prompts.
    prefill_kernels: bool = True
    placement: Placement | None = None
    # Where prompts (multi-token steps) run, when not where decoding does (an NPU's int8
    # graphs for prompts, the CPU for tokens): both are loaded, and since every backend
    # computes in host memory the KV cache is shared, with nothing to hand over.
    prefill_placement: Placement | None = None
    # Let idle ONNX Runtime threads spin between runs. None: on, unless another runtime or
    # engine computes on the same cores in between (a split placement, a draft model).
    spinning: bool | None = None
    # Move the loaded weights onto transparent huge pages (`edge.huge_pages`): fewer TLB
    # misses per decode step, no more memory; off only to measure what it gives.
    huge_pages: bool = True
    # ONNX Runtime's packed weights kept in edge's cache after the first load and mapped from
    # it at later ones (`devices.backends.ort_prepacked`): no packing transient, the weights
    # once, in reclaimable page cache. "use" maps stores that exist but builds none (a build
    # peaks above the heap path: what a memory budget must not meet); "off" packs on the heap.
    prepacked_cache: PrepackedMode = "build"
    # Step at least two tokens where a package rounds activations by step shape (int4 at
    # ONNX Runtime's accuracy_level 4): a token's logits then do not depend on how many tokens
    # share its step, so speculative output equals plain output bit for bit. Costs 8-22% of
    # plain decode speed (measured, BENCHMARKS.md), so off unless asked (`edge.load(exact=)`).
    uniform_steps: bool = False
    # How often a device that left is asked whether it is back (`Engine.readmit`), in seconds:
    # each time costs up to one connect timeout while it is still gone.
    readmit_interval_s: float = 10.0
    # Rewrite the decode graphs' attention as they load so that one pass can verify a token
    # tree (`verify_tree`, edge/tree_attention.py); plain steps keep their arithmetic bit for
    # bit. ONNX Runtime's CPU backend only.
    tree_verify: bool = False
    # The KV cache's element type: "float16" halves its memory and "int8" quarters it where
    # every part runs on a backend that computes attention itself (the streamed one;
    # `StreamConfig` asks for float16); ONNX Runtime's attention takes float32.
    kv_dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.readmit_interval_s >= 0:
            raise ConfigError(f"readmit_interval_s={self.readmit_interval_s}; must be >= 0")
        check_mode(self.prepacked_cache)
        check_run_settings(self.max_context, self.prefill_chunk, self.threads, self.kv_dtype)
        if self.parts_per_session is not None and self.parts_per_session < 1:
            raise ConfigError(f"parts_per_session={self.parts_per_session}; must be >= 1")
        for name in ("placement", "prefill_placement"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Placement):
                raise ConfigError(f"{name}={value!r}; must be an edge.placement.Placement or None")


def check_run_settings(
    max_context: int | None, prefill_chunk: int, threads: int | None, kv_dtype: str
) -> None:
    """The settings a resident and a streamed run share (`EngineConfig`, `StreamConfig`)."""
    if max_context is not None and max_context < 1:
        raise ConfigError(f"max_context={max_context}; must be >= 1")
    if prefill_chunk < 1:
        raise ConfigError(f"prefill_chunk={prefill_chunk}; must be >= 1")
    if threads is not None and threads < 1:
        raise ConfigError(f"threads={threads}; must be >= 1")
    if kv_dtype not in KV_DTYPES:
        raise ConfigError(f"kv_dtype={kv_dtype!r}; one of {list(KV_DTYPES)}")


def default_context(spec: ModelSpec, available: int | None = None) -> int:
    """`DEFAULT_MAX_CONTEXT`, or less where its float32 KV cache would take more than
    `KV_MEMORY_SHARE` of the memory available (a multiple of 256, at least 256)."""
    if available is None:
        from devices.memory_info import read_memory

        available = read_memory().available
    per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * 4
    fits = int(available * KV_MEMORY_SHARE) // per_token // 256 * 256
    context = max(MIN_DEFAULT_CONTEXT, min(DEFAULT_MAX_CONTEXT, fits))
    if context < DEFAULT_MAX_CONTEXT:
        log.warning(
            "context window %d tokens (its KV cache fits in a quarter of the %d MiB available; "
            "max_context=N to choose)",
            context,
            available >> 20,
        )
    return context
