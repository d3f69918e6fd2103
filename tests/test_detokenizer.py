"""Tests for edge.detokenizer against real `tokenizers` decoders (no network needed)."""

from __future__ import annotations

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from edge.detokenizer import IncrementalDetokenizer, StopStringMatcher

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world, hello again!",
    "Café, naïve, résumé, Ångström, São Paulo, Zürich, crème brûlée.",
    "我们今天去公园散步。天气很好，阳光明媚。你好，世界！",
    "日本語のテキストも少し。こんにちは世界。",
    "Emoji time 😀😃😄 🎉🎉 🚀 and flags 🇫🇷🇯🇵 and family 👨‍👩‍👧‍👦 ❤️",
    "Mixed: hello 世界 😀 café 🚀 ünïcödé 🎉 end.",
]

TEXTS = [
    *CORPUS,
    "Unseen: 🦄🦀🧠 жизнь прекрасна, ελληνικά, עברית, हिन्दी",  # chars never trained on
    "  leading and trailing spaces  ",
    "a",
    "😀",
]


def _byte_level_bpe(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 3, trainer=trainer)
    return tok


@pytest.fixture(scope="module", params=[260, 400, 1000], ids=lambda v: f"vocab{v}")
def bpe(request: pytest.FixtureRequest) -> Tokenizer:
    return _byte_level_bpe(request.param)


def _stream(detok: IncrementalDetokenizer, ids: list[int]) -> list[str]:
    return [detok.push(i) for i in ids] + [detok.flush()]


def _splits_a_character(tok: Tokenizer, ids: list[int]) -> bool:
    """True if some single token does not decode to whole characters."""
    return any("\ufffd" in tok.decode([i]) for i in ids)


def test_corpus_really_has_multi_token_characters() -> None:
    tok = _byte_level_bpe(260)
    ids = tok.encode("😀 我们").ids
    assert _splits_a_character(tok, ids)


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_reassemble_byte_level_text(bpe: Tokenizer, text: str) -> None:
    ids = bpe.encode(text).ids
    expected = bpe.decode(ids)
    assert expected == text  # byte-level BPE is lossless
    detok = IncrementalDetokenizer(bpe.decode)
    deltas = _stream(detok, ids)
    assert "".join(deltas) == expected
    assert detok.text == expected
    if "\ufffd" not in expected:
        assert not any("\ufffd" in d for d in deltas)


def test_deltas_are_whole_characters(bpe: Tokenizer) -> None:
    text = "🦄😀我们👨‍👩‍👧‍👦"
    deltas = _stream(IncrementalDetokenizer(bpe.decode), bpe.encode(text).ids)
    emitted = [d for d in deltas if d]
    # Each delta is a run of complete characters of the original text.
    position = 0
    for delta in emitted:
        assert text.startswith(delta, position)
        position += len(delta)
    assert position == len(text)


def test_invalid_utf8_is_released_by_flush() -> None:
    tok = _byte_level_bpe(260)
    # ByteLevel maps byte 0xF0 (lead byte of a 4-byte character) to the symbol "ð"; ending
    # on it leaves an incomplete character, which decodes to U+FFFD for good.
    ids = [*tok.encode("ok").ids, tok.token_to_id("ð")]
    expected = tok.decode(ids)
    assert expected == "ok\ufffd"
    detok = IncrementalDetokenizer(tok.decode)
    pushed = "".join(detok.push(i) for i in ids)
    assert pushed == "ok"  # held back while it might still complete
    assert pushed + detok.flush() == expected


def test_decode_cost_does_not_grow_with_length() -> None:
    tok = _byte_level_bpe(400)
    calls: list[int] = []

    def decode(ids: list[int]) -> str:
        calls.append(len(ids))
        return tok.decode(ids)

    ids = tok.encode(" ".join(CORPUS) * 20).ids
    detok = IncrementalDetokenizer(decode)
    assert "".join(_stream(detok, ids)) == tok.decode(ids)
    assert len(ids) > 1000
    # The window is a few characters' worth of tokens, whatever the length of the text.
    assert max(calls) <= 16


def _word_level(decoder: decoders.Decoder, words: list[str]) -> tuple[Tokenizer, list[int]]:
    """A tokenizer whose ids are exactly `words`, decoded by `decoder`."""
    vocab = {w: i for i, w in enumerate(dict.fromkeys(["[UNK]", *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.decoder = decoder
    return tok, [vocab[w] for w in words]


def test_sentencepiece_style_leading_space_depends_on_context() -> None:
    # Metaspace drops the space of the first word only: decode(["▁world"]) == "world", but
    # after "▁Hello" the same token renders as " world".
    tok, ids = _word_level(decoders.Metaspace(), ["▁Hello", "▁world", "!", "▁Ok"])
    assert tok.decode(ids[1:2]) == "world"
    detok = IncrementalDetokenizer(tok.decode)
    deltas = _stream(detok, ids)
    assert deltas[:4] == ["Hello", " world", "!", " Ok"]
    assert "".join(deltas) == tok.decode(ids) == "Hello world! Ok"


def test_prompt_tail_gives_context_to_the_first_token() -> None:
    tok, ids = _word_level(decoders.Metaspace(), ["▁Hi", "▁there", "▁friend"])
    detok = IncrementalDetokenizer(tok.decode, prompt_tail=ids[:1])
    assert _stream(detok, ids[1:]) == [" there", " friend", ""]
    assert detok.text == " there friend"


def test_wordpiece_joins_depend_on_next_token() -> None:
    tok, ids = _word_level(decoders.WordPiece(), ["un", "##believ", "##able", "news", "##!"])
    deltas = _stream(IncrementalDetokenizer(tok.decode), ids)
    assert "".join(deltas) == tok.decode(ids) == "unbelievable news!"


def test_empty_stream() -> None:
    detok = IncrementalDetokenizer(lambda ids: "x" * len(ids))
    assert detok.flush() == ""
    assert detok.text == ""


# --- StopStringMatcher -------------------------------------------------------------------


def _feed_all(matcher: StopStringMatcher, deltas: list[str]) -> tuple[str, bool]:
    out, stopped = [], False
    for delta in deltas:
        text, stopped = matcher.feed(delta)
        out.append(text)
        if stopped:
            break
    if not stopped:
        out.append(matcher.flush())
    return "".join(out), stopped


def test_stop_split_across_deltas() -> None:
    m = StopStringMatcher(["</s>"])
    assert m.feed("Hello <") == ("Hello ", False)
    assert m.feed("/") == ("", False)
    assert m.feed("s> and more") == ("", True)
    assert m.stopped
    assert m.feed("ignored") == ("", True)
    assert m.flush() == ""


def test_stop_at_the_very_start() -> None:
    m = StopStringMatcher(["STOP"])
    assert m.feed("STOP right there") == ("", True)


def test_text_after_stop_in_same_delta_is_dropped() -> None:
    assert StopStringMatcher(["\n\n"]).feed("line one\n\nline two") == ("line one", True)


def test_two_stops_with_shared_prefix() -> None:
    stops = ["###", "##END"]
    assert _feed_all(StopStringMatcher(stops), ["a #", "#E", "ND b"]) == ("a ", True)
    assert _feed_all(StopStringMatcher(stops), ["a #", "#", "# b"]) == ("a ", True)
    assert _feed_all(StopStringMatcher(stops), ["a ##", "x"]) == ("a ##x", False)


def test_partial_match_that_is_not_a_stop() -> None:
    m = StopStringMatcher(["abc"])
    assert m.feed("ab") == ("", False)
    assert m.feed("x") == ("abx", False)
    assert m.feed("zab") == ("z", False)
    assert m.feed("abc") == ("ab", True)
    assert m.flush() == ""


def test_held_prefix_can_restart_inside_itself() -> None:
    # After "aaa" only the last "aa" can still start "aab", so one "a" is released.
    m = StopStringMatcher(["aab"])
    assert m.feed("aa") == ("", False)
    assert m.feed("a") == ("a", False)
    assert m.feed("b!") == ("", True)


def test_flush_releases_held_text() -> None:
    m = StopStringMatcher(["<|end|>"])
    assert m.feed("done <|en") == ("done ", False)
    assert m.flush() == "<|en"
    assert m.flush() == ""


def test_result_does_not_depend_on_chunking() -> None:
    stops = ["abcd", "bc"]
    text = "xxabcdyy"
    whole = _feed_all(StopStringMatcher(stops), [text])
    by_char = _feed_all(StopStringMatcher(stops), list(text))
    assert whole == by_char == ("xxa", True)


def test_no_stops_passes_text_through() -> None:
    m = StopStringMatcher([])
    assert m.feed("anything") == ("anything", False)
    assert m.flush() == ""


def test_empty_stop_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        StopStringMatcher(["ok", ""])


def test_detokenizer_and_stop_matcher_together(bpe: Tokenizer) -> None:
    text = "Hello 世界 😀 STOP🚀 never shown"
    ids = bpe.encode(text).ids
    detok, matcher = IncrementalDetokenizer(bpe.decode), StopStringMatcher(["STOP🚀"])
    out = []
    for i in ids:
        emitted, stopped = matcher.feed(detok.push(i))
        out.append(emitted)
        if stopped:
            break
    assert stopped
    assert "".join(out) == "Hello 世界 😀 "
