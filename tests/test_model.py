"""The SDK face on the real SmolLM2-135M-Instruct package: `edge.load`, `Model.generate`,
`stream` and `chat` keep their promises (determinism, stop conditions, seeds, chat template,
prefix reuse, typed errors, the export cache)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import edge
from edge import GenerationResponse, Model

PROMPT = "The capital of France is"
N = 8
COUNT_PROMPT = "Count: one, two,"  # greedy: " three, four, five, six, ..."
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]  # short reply, then EOS


def _load(package: Path, **kwargs: object) -> Model:
    return edge.load(str(package), progress=False, **kwargs)


@pytest.fixture(scope="module")
def loaded(smollm2_package: Path) -> tuple[Model, list[GenerationResponse]]:
    """The model, and its greedy stream for PROMPT taken while the model was still fresh."""
    model = _load(smollm2_package)
    return model, list(model.stream(PROMPT, max_tokens=N))


@pytest.fixture(scope="module")
def model(loaded: tuple[Model, list[GenerationResponse]]) -> Model:
    return loaded[0]


@pytest.fixture(scope="module")
def greedy(loaded: tuple[Model, list[GenerationResponse]]) -> list[GenerationResponse]:
    return loaded[1]


def _text(responses: list[GenerationResponse]) -> str:
    return "".join(r.text for r in responses)


# ---- greedy generation and streaming -----------------------------------------------------------


def test_generate_is_the_streamed_text_and_deterministic(model: Model, greedy: list) -> None:
    """Greedy generate() returns the concatenated stream text, the same every time."""
    first = model.generate(PROMPT, max_tokens=N)
    assert first == _text(greedy)
    assert model.generate(PROMPT, max_tokens=N) == first
    assert first.startswith(" Paris")


def test_stream_yields_one_response_per_token(model: Model, greedy: list) -> None:
    """stream() yields GenerationResponses with ids, logprobs <= 0 and a running count."""
    assert len(greedy) == N
    prompt_tokens = len(model.tokenizer.encode(PROMPT))
    for n, response in enumerate(greedy, start=1):
        assert isinstance(response, GenerationResponse)
        assert isinstance(response.token, int)
        assert 0 <= response.token < model.spec.vocab_size
        assert response.logprob <= 0.0
        assert response.generation_tokens == n
        assert response.prompt_tokens == prompt_tokens
        assert response.prompt_tps > 0
        assert response.from_draft is False
        assert response.finish_reason == (None if n < N else "length")


def test_streamed_text_decodes_the_generated_ids(model: Model, greedy: list) -> None:
    """The concatenated stream text equals decoding all generated token ids at once."""
    assert _text(greedy) == model.tokenizer.decode([r.token for r in greedy])


def test_token_id_prompt_gives_the_same_generation(model: Model, greedy: list) -> None:
    """A prompt given as token ids generates exactly what the same prompt as text does."""
    ids = model.tokenizer.encode(PROMPT)
    assert [r.token for r in model.stream(ids, max_tokens=N)] == [r.token for r in greedy]


# ---- stop conditions -----------------------------------------------------------------------------


def test_stop_string_ends_generation_before_it(model: Model) -> None:
    """A stop string ends generation with finish_reason "stop" and is not in the text."""
    responses = list(model.stream(COUNT_PROMPT, max_tokens=12, stop=["five"]))
    assert _text(responses) == " three, four, "
    assert responses[-1].finish_reason == "stop"
    assert all(r.finish_reason is None for r in responses[:-1])


def test_unmatched_stop_string_changes_nothing(model: Model) -> None:
    """A stop string that never appears leaves the text as without it."""
    plain = model.generate(COUNT_PROMPT, max_tokens=6)
    assert model.generate(COUNT_PROMPT, max_tokens=6, stop=["zebra"]) == plain


def test_stop_given_as_one_string_is_one_stop_string(model: Model) -> None:
    """stop="five" (a plain string) behaves like stop=["five"]."""
    assert model.generate(COUNT_PROMPT, max_tokens=12, stop="five") == " three, four, "


def test_eos_ends_generation_with_stop(model: Model) -> None:
    """The model's end-of-turn token ends a chat reply with finish_reason "stop"."""
    responses = list(model.chat_stream(FRANCE, max_tokens=40))
    assert len(responses) < 40
    assert responses[-1].finish_reason == "stop"
    assert responses[-1].token in model.tokenizer.eos_token_ids
    assert responses[-1].text == ""
    assert "Paris" in _text(responses)
    assert "<|im_end|>" not in _text(responses)


def test_ignore_eos_generates_past_the_end_of_turn(model: Model) -> None:
    """ignore_eos=True keeps generating to max_tokens, ending with "length"."""
    reply = list(model.chat_stream(FRANCE, max_tokens=40))
    n = len(reply) + 1
    responses = list(model.chat_stream(FRANCE, max_tokens=n, ignore_eos=True))
    assert len(responses) == n
    assert responses[-1].finish_reason == "length"
    assert [r.token for r in responses[: len(reply)]] == [r.token for r in reply]


# ---- sampling ----------------------------------------------------------------------------------


def test_sampling_is_reproducible_with_a_seed(model: Model) -> None:
    """temperature=1 with the same seed gives the same text; another seed gives another."""
    kwargs = {"max_tokens": N, "temperature": 1.0}
    a = [r.token for r in model.stream("Once upon a time", seed=1, **kwargs)]
    b = [r.token for r in model.stream("Once upon a time", seed=1, **kwargs)]
    c = [r.token for r in model.stream("Once upon a time", seed=2, **kwargs)]
    assert a == b
    assert a != c


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"stop": [""]}, "stop"),
        ({"top_k": -1}, "top_k"),
        ({"min_p": 1.5}, "min_p"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
    ],
)
def test_invalid_sampling_values_raise_before_any_work(
    model: Model, kwargs: dict, named: str
) -> None:
    """An out-of-range generation parameter raises InvalidSamplingError at the call, naming it,
    before the model runs."""
    position = model.engine.position
    with pytest.raises(edge.InvalidSamplingError, match=named):
        model.stream(PROMPT, **kwargs)  # not iterated: the error comes from the call itself
    with pytest.raises(edge.InvalidSamplingError, match=named):
        model.generate(PROMPT, **kwargs)
    assert model.engine.position == position


# ---- chat and prefix reuse ---------------------------------------------------------------------


def test_chat_renders_the_model_chat_template(model: Model) -> None:
    """chat(messages) equals generate() on the rendered chat template without special tokens."""
    rendered = model.tokenizer.apply_chat_template(FRANCE, add_generation_prompt=True)
    assert rendered.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    expected = model.generate(rendered, add_special_tokens=False, max_tokens=12)
    assert model.chat(FRANCE, max_tokens=12) == expected


def test_prefix_reuse_does_not_change_the_reply(
    model: Model, greedy: list, smollm2_package: Path
) -> None:
    """A second chat turn (reusing the cached first turn) replies exactly as a fresh model does,
    and a generate after the chat gives the fresh model's text."""
    first = model.chat(FRANCE, max_tokens=16)
    second_turn = [
        *FRANCE,
        {"role": "assistant", "content": first},
        {"role": "user", "content": "And of Germany?"},
    ]
    reply = model.chat(second_turn, max_tokens=12)
    fresh = _load(smollm2_package)
    assert fresh.chat(second_turn, max_tokens=12) == reply
    assert model.generate(PROMPT, max_tokens=N) == _text(greedy)


def test_generating_a_prompt_that_diverges_midway_matches_fresh(model: Model, greedy: list) -> None:
    """A prompt sharing only part of the cached tokens still generates as on a fresh model."""
    model.generate("The capital of Germany is", max_tokens=4)
    assert model.generate(PROMPT, max_tokens=N) == _text(greedy)


def test_abandoned_stream_then_longer_prompt_works(model: Model, greedy: list) -> None:
    """Stopping a stream early and then extending its text (a cut-short chat reply followed by
    the next turn) generates as if nothing had been cached."""
    ids = model.tokenizer.encode(PROMPT)
    responses = model.stream(ids, max_tokens=N)
    first = next(responses)  # the caller stops reading here, as `for ...: break` does
    responses.close()
    assert first.token == greedy[0].token
    continued = [*ids, first.token, *model.tokenizer.encode(" and")]
    text = model.generate(continued, max_tokens=2)
    model.generate("Hello", max_tokens=1)  # shares no prefix: the next call starts afresh
    assert model.generate(continued, max_tokens=2) == text


# ---- KV slots: interleaved conversations ---------------------------------------------------------

# Each long enough that what the next one would overwrite of its cache is worth a slot
# (MIN_SLOT_TOKENS, beyond the 24 tokens of SmolLM2's system prompt they share).
STORY = (
    "Tell me a long story about a dragon who lived in a castle by the sea, and about the knight "
    "who came to visit him every summer."
)
PLANTS = (
    "How do plants turn sunlight, water and air into sugar? Explain it simply, step by step, "
    "for a child of ten."
)
TRAINS = (
    "Why do trains run on rails rather than on roads, and why are they so much quieter than trucks?"
)


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _ids(model: Model, messages: list[dict]) -> list[int]:
    rendered = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return model.tokenizer.encode(rendered, add_special_tokens=False)


@pytest.fixture
def fed(model: Model, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of tokens each `engine.prefill` call feeds (what prefill really costs)."""
    counts: list[int] = []
    prefill = model.engine.prefill

    def counting(ids, all_logits: bool = False):
        counts.append(len(ids))
        return prefill(ids, all_logits)

    monkeypatch.setattr(model.engine, "prefill", counting)
    return counts


def _second_turn(model: Model) -> tuple[list[dict], list[int]]:
    """STORY, then PLANTS in between, then STORY's next turn: its messages and prompt ids."""
    model.engine.reset()  # whatever earlier tests left is no longer cached
    first = model.chat(_user(STORY), max_tokens=8)
    model.chat(_user(PLANTS), max_tokens=8)
    turn = [*_user(STORY), {"role": "assistant", "content": first}, _user("Go on.")[0]]
    return turn, _ids(model, turn)


def test_kv_slots_keep_each_interleaved_conversation(
    model: Model, fed: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A, B, A with two slots: A's next turn restores A's prefix and prefills only its new
    tokens, and replies exactly as a fresh cache does."""
    from edge.kv_slots import KVSlots

    monkeypatch.setattr(model, "kv_slots", KVSlots(2, 1 << 30))
    turn, ids = _second_turn(model)
    reuse = model.cached_prefix(ids)
    assert (
        reuse >= len(_ids(model, _user(STORY))) - 1
    )  # A's first turn, not just the shared template
    reply = model.chat(turn, max_tokens=8)
    assert model.last_reuse == reuse and fed[-1] == len(ids) - reuse
    model.engine.reset()  # a fresh cache, with nothing to restore
    monkeypatch.setattr(model, "kv_slots", None)
    assert model.chat(turn, max_tokens=8) == reply and fed[-1] == len(ids)


def test_without_kv_slots_the_other_conversation_overwrites(model: Model, fed: list[int]) -> None:
    """kv_slots=0 (load's default): one cache, the latest conversation's, as before."""
    assert model.kv_slots is None
    turn, ids = _second_turn(model)
    reuse = model.cached_prefix(ids)
    assert reuse < len(_ids(model, _user(STORY))) // 2
    model.chat(turn, max_tokens=8)
    assert model.last_reuse == reuse and fed[-1] == len(ids) - reuse


def test_kv_slot_bytes_evict_the_oldest(model: Model, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots beyond the byte bound go oldest first; a snapshot larger than it is not kept."""
    from edge.kv_slots import KVSlots

    slots = KVSlots(4, 1 << 30)
    monkeypatch.setattr(model, "kv_slots", slots)
    model.engine.reset()
    model.chat(_user(STORY), max_tokens=8)
    model.chat(_user(PLANTS), max_tokens=8)  # saves STORY's prefix
    (story,) = slots.snapshots
    slots.max_bytes = story.nbytes  # room for STORY's prefix or PLANTS' (shorter), not both
    model.chat(_user(TRAINS), max_tokens=8)  # saves PLANTS', which evicts STORY's
    (plants,) = slots.snapshots
    prompt = _ids(model, _user(PLANTS))
    assert list(plants.tokens[: len(prompt)]) == prompt
    assert slots.nbytes <= slots.max_bytes
    slots.max_bytes = 0
    model.chat(_user(STORY), max_tokens=8)  # TRAINS' prefix does not fit: nothing is kept
    assert slots.snapshots == (plants,)


def test_a_backend_owning_its_cache_disables_snapshots(
    model: Model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend keeping its own KV cache (a GPU's, a cluster's) makes snapshots refused."""
    from devices.backends.ort_cpu import OrtCpuBackend
    from edge.errors import ConfigError

    assert model.engine.can_snapshot
    monkeypatch.setattr(OrtCpuBackend, "owns_cache", True)
    assert not model.engine.can_snapshot
    with pytest.raises(ConfigError, match="keeps its own KV cache"):
        model.engine.save_prefix(0)


# ---- the context window ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small(smollm2_package: Path) -> Model:
    """The model with a 64-token context window."""
    return _load(smollm2_package, max_context=64)


def _prompt_of(model: Model, n_tokens: int) -> list[int]:
    ids = model.tokenizer.encode(" one two three four" * n_tokens, add_special_tokens=False)
    return ids[:n_tokens]


def test_prompt_longer_than_the_window_raises_context_overflow(small: Model) -> None:
    """A prompt that leaves no room to generate raises ContextOverflowError naming the window."""
    assert small.engine.max_context == 64
    for n in (64, 100):
        with pytest.raises(edge.ContextOverflowError, match="64"):
            small.generate(_prompt_of(small, n), max_tokens=4)
    text = " ".join(["word"] * 200)
    with pytest.raises(edge.ContextOverflowError):
        small.generate(text)


def test_generation_reaching_the_window_ends_with_length(small: Model) -> None:
    """A prompt that fits but whose generation fills the window ends with "length", no error."""
    responses = list(small.stream(_prompt_of(small, 60), max_tokens=50))
    assert len(responses) == 64 - 60 + 1  # the last token is sampled from the window's last slot
    assert responses[-1].finish_reason == "length"
    assert all(r.finish_reason is None for r in responses[:-1])
    # The model stays usable, and a full window does not leak into the next generation.
    assert len(list(small.stream(_prompt_of(small, 63), max_tokens=50))) == 2


# ---- loading -------------------------------------------------------------------------------------


def test_unknown_model_name_lists_the_known_ones() -> None:
    """edge.load of an unknown name raises UnknownModelError listing the registered models."""
    with pytest.raises(edge.UnknownModelError, match="smollm2-135m"):
        edge.load("no-such-model", progress=False)


def test_gguf_is_exported_once_into_the_cache(
    smollm2_gguf: Path, greedy: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading a GGUF file exports it into edge's cache once; a second load reuses the package.
    (The export is int8 here, to keep the suite short: which export is the default is
    tests/exporters/test_export_defaults.py's business.)"""
    import exporters.defaults
    from exporters.export import ExportConfig

    monkeypatch.setenv("EDGE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(
        exporters.defaults, "default_export_config", lambda source: ExportConfig(quant="int8")
    )
    first = edge.load(smollm2_gguf, progress=False)
    root = first.package.root
    assert root.is_relative_to(tmp_path.resolve())
    manifest = root / "manifest.json"
    stamp = os.stat(manifest).st_mtime_ns
    assert [r.token for r in first.stream(PROMPT, max_tokens=4)] == [r.token for r in greedy[:4]]
    second = edge.load(str(smollm2_gguf), progress=False)
    assert second.package.root == root
    assert os.stat(manifest).st_mtime_ns == stamp
    assert len(list((tmp_path / "packages").iterdir())) == 1


def test_a_package_exported_before_an_option_existed_is_not_exported_again() -> None:
    """A cached package's recorded export config lacks the options added since; they count
    at their defaults (what the earlier export did), so only a real difference re-exports."""
    from edge.resolve import _as_exported, _record
    from exporters.export import ExportConfig

    wanted = _record(ExportConfig(quant="int4", block_size=64))
    older = {k: v for k, v in wanted.items() if k not in ("static_ops", "static_attention_bits")}
    assert _as_exported(older, ExportConfig) == wanted
    assert _as_exported({**older, "block_size": 32}, ExportConfig) != wanted
