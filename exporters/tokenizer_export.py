"""Write a source's tokenizer into a package, and refuse unless it behaves exactly the same."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edge.errors import TokenizerMismatchError
from edge.format import TokenizerInfo
from edge.tokenizer import Tokenizer

TOKENIZER_FILE = "tokenizer.json"
# Tokens that end a turn in the chat formats of the supported families.
END_OF_TURN_TOKENS = (
    "<|im_end|>",
    "<|endoftext|>",
    "<|eot_id|>",
    "<|end_of_text|>",
    "<end_of_turn>",
    "</s>",
)

# A fixed multilingual corpus: scripts, emoji (multi-token characters), code, odd whitespace.
CHECK_CORPUS = (
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Édition spéciale: naïve café, façade, crème brûlée, Straße, Øresund, Ærø.",
    "日本語のテキストと中文文本，还有한국어 문장도 있습니다。",
    "Русский текст, ελληνικά, עברית, العربية, हिन्दी, ไทย.",
    "Emoji 🙂🚀👩‍💻🇫🇷 and symbols ©®™ ∑∫√ ≤≥ → ←.",
    "def f(x):\n\treturn {'a': [1, 2, 3]}  # comment\n\n\n    indented   spaces",
    "Numbers 1234567890 3.14159 -42 1e-9 0x1F, and URLs https://example.com/a?b=c&d=e",
    "  leading spaces, trailing spaces   \r\n windows line\u00a0nbsp\u200bzero-width",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<s>Special tokens in text</s> <|endoftext|> <|eot_id|>",
)


def tokenizer_info(reference: Any) -> TokenizerInfo:
    """Conventions from the reference (transformers) tokenizer."""
    vocab = reference.get_vocab()
    eos = [reference.eos_token_id] if reference.eos_token_id is not None else []
    eos += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] not in eos]
    return TokenizerInfo(
        file=TOKENIZER_FILE,
        chat_template=reference.chat_template if isinstance(reference.chat_template, str) else None,
        bos_token=reference.bos_token,
        eos_token=reference.eos_token,
        eos_token_ids=tuple(int(i) for i in eos),
        bos_token_id=reference.bos_token_id,
    )


def export_tokenizer(reference: Any, out_dir: Path, check: bool = True) -> TokenizerInfo:
    """Save `reference` as `tokenizer.json` in `out_dir` and check it round-trips identically."""
    reference.backend_tokenizer.save(str(out_dir / TOKENIZER_FILE))
    info = tokenizer_info(reference)
    if check:
        check_tokenizer(reference, Tokenizer(out_dir / TOKENIZER_FILE, info))
    return info


def check_tokenizer(reference: Any, exported: Tokenizer) -> None:
    """Raise `TokenizerMismatchError` at the first text the two tokenizers treat differently."""
    for text in CHECK_CORPUS:
        expected = list(reference(text)["input_ids"])
        actual = exported.encode(text)
        if actual != expected:
            raise TokenizerMismatchError(
                f"exported tokenizer encodes {text!r} as {actual[:16]}..., "
                f"the source as {expected[:16]}..."
            )
        for skip in (False, True):
            want = reference.decode(expected, skip_special_tokens=skip)
            got = exported.decode(expected, skip_special_tokens=skip)
            if got != want:
                raise TokenizerMismatchError(
                    f"exported tokenizer decodes {text!r} as {got!r}, the source as {want!r} "
                    f"(skip_special_tokens={skip})"
                )
