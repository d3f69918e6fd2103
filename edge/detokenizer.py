"""Streaming text out of a stream of token ids.

Decoding one token at a time is wrong for real tokenizers: byte-level BPE splits one character
(an emoji, a CJK ideograph) over several tokens, and SentencePiece/WordPiece decoders render a
token differently depending on what precedes it (leading spaces, "##" joins). Decoding the whole
sequence each step is right but costs O(n) per token. `IncrementalDetokenizer` decodes a short
window instead, the prefix/read-offset technique used by Hugging Face TGI and vLLM.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

__all__ = ["IncrementalDetokenizer", "StopStringMatcher"]

_REPLACEMENT = "\ufffd"  # what a decoder prints for an incomplete UTF-8 sequence


class IncrementalDetokenizer:
    """Turns token ids, pushed one at a time, into text deltas.

    Keeps only a window of ids: `_ids[:_read]` were already emitted and serve as context, so
    `decode(_ids)[len(decode(_ids[:_read])):]` is the new text. Output is held back while it
    ends with U+FFFD, because that usually means a character is split across tokens.

    With an empty `prompt_tail`, the concatenation of all deltas and `flush()` equals
    `decode(all pushed ids)` for decoders that are stable at character boundaries (byte-level
    BPE, SentencePiece, WordPiece). A non-empty `prompt_tail` (the last few prompt ids) gives
    the first generated tokens their context, e.g. the space before a SentencePiece word; the
    output is then the text those tokens add after the prompt.
    """

    def __init__(self, decode: Callable[[list[int]], str], prompt_tail: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids: list[int] = list(prompt_tail)  # the window: context + not yet emitted ids
        self._read = len(self._ids)  # ids before this index are already emitted
        self._chunks: list[str] = []

    @property
    def text(self) -> str:
        """Everything emitted so far (deltas and flush), joined."""
        if len(self._chunks) > 1:
            self._chunks = ["".join(self._chunks)]
        return self._chunks[0] if self._chunks else ""

    def push(self, token_id: int) -> str:
        """Add one generated id; returns the newly decodable text, possibly ""."""
        self._ids.append(token_id)
        return self._advance(final=False)

    def flush(self) -> str:
        """Release text held back at the end (e.g. a genuinely trailing U+FFFD).

        Call once, when generation is over: a character completed by a later push would
        already have been emitted as U+FFFD.
        """
        return self._advance(final=True)

    def _advance(self, *, final: bool) -> str:
        prefix_text = self._decode(self._ids[: self._read])
        new_text = self._decode(self._ids)
        if len(new_text) <= len(prefix_text):
            return ""
        if new_text.endswith(_REPLACEMENT) and not final:
            return ""  # probably a character split across tokens: wait for the rest
        delta = new_text[len(prefix_text) :]
        # The ids just emitted become the next window's context; older ones are dropped.
        del self._ids[: self._read]
        self._read = len(self._ids)
        self._chunks.append(delta)
        return delta


class StopStringMatcher:
    """Cuts streamed text at the first stop string, without ever emitting part of one.

    Text that might be the start of a stop string is held back until the next delta shows
    whether it is. A stop string counts as found where it ends first, as if text arrived one
    character at a time, so the result does not depend on how the text was chunked.
    """

    def __init__(self, stop: Sequence[str]) -> None:
        if any(s == "" for s in stop):
            raise ValueError("stop strings must be non-empty")
        self._stops = tuple(dict.fromkeys(stop))
        # Proper prefixes of the stop strings: a suffix of the text in this set is held back.
        self._prefixes = {s[:i] for s in self._stops for i in range(1, len(s))}
        self._longest_prefix = max((len(p) for p in self._prefixes), default=0)
        self._held = ""
        self._stopped = False

    @property
    def stopped(self) -> bool:
        """True once a stop string has been seen; later input is ignored."""
        return self._stopped

    def feed(self, delta: str) -> tuple[str, bool]:
        """Returns (text safe to emit now, whether a stop string completed)."""
        if self._stopped:
            return "", True
        text = self._held + delta
        cut = self._first_stop(text)
        if cut is not None:
            self._held, self._stopped = "", True
            return text[:cut], True
        hold = self._held_suffix_len(text)
        self._held = text[len(text) - hold :]
        return text[: len(text) - hold], False

    def flush(self) -> str:
        """Release held-back text at the end of generation (it turned out not to be a stop)."""
        held, self._held = self._held, ""
        return held

    def _first_stop(self, text: str) -> int | None:
        """Start index of the stop string that ends earliest in `text`, or None."""
        best: tuple[int, int] | None = None  # (end, start)
        for s in self._stops:
            start = text.find(s)
            if start >= 0 and (best is None or (start + len(s), start) < best):
                best = (start + len(s), start)
        return None if best is None else best[1]

    def _held_suffix_len(self, text: str) -> int:
        """Length of the longest suffix of `text` that a stop string starts with."""
        for n in range(min(len(text), self._longest_prefix), 0, -1):
            if text[-n:] in self._prefixes:
                return n
        return 0
