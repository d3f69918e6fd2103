"""The exported SmolLM2 tokenizer behaves exactly like transformers' tokenizer for the same GGUF,
and export refuses a tokenizer that does not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("transformers")

from edge.errors import TokenizerMismatchError
from edge.format import read_manifest
from edge.package import open_package
from edge.tokenizer import Tokenizer
from exporters import tokenizer_export
from exporters.export import export
from exporters.tokenizer_export import CHECK_CORPUS, check_tokenizer

CORPUS_IDS = [f"corpus{i}" for i in range(len(CHECK_CORPUS))]
SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one line."}
CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris."},
    {"role": "user", "content": "And of Japan? Réponds en français, s'il te plaît 🙂"},
    {"role": "assistant", "content": "Tokyo."},
    {"role": "user", "content": "Thanks!\n\nOne more: Italy?"},
]


@pytest.fixture(scope="module")
def exported(smollm2_package: Path) -> Tokenizer:
    return Tokenizer.from_package(open_package(smollm2_package))


@pytest.fixture(scope="module")
def reference(smollm2_reference: Any) -> Any:
    return smollm2_reference[1]


@pytest.mark.parametrize("text", CHECK_CORPUS, ids=CORPUS_IDS)
def test_corpus_encodes_and_decodes_like_reference(
    text: str, exported: Tokenizer, reference: Any
) -> None:
    expected = list(reference(text)["input_ids"])
    assert exported.encode(text) == expected
    assert exported.encode(text, add_special_tokens=False) == list(
        reference(text, add_special_tokens=False)["input_ids"]
    )
    for skip in (False, True):
        assert exported.decode(expected, skip_special_tokens=skip) == reference.decode(
            expected, skip_special_tokens=skip
        ), f"skip_special_tokens={skip}"


def test_special_tokens_are_single_ids(exported: Tokenizer, reference: Any) -> None:
    """Special tokens written in text map to their own ids, and skipping them drops them."""
    text = next(t for t in CHECK_CORPUS if "<|im_start|>" in t)
    ids = exported.encode(text)
    im_start, im_end = exported.token_to_id("<|im_start|>"), exported.token_to_id("<|im_end|>")
    assert (im_start, im_end) == (
        reference.convert_tokens_to_ids("<|im_start|>"),
        reference.convert_tokens_to_ids("<|im_end|>"),
    )
    assert ids.count(im_start) == 2 and ids.count(im_end) == 1
    assert exported.decode(ids, skip_special_tokens=False) == text
    assert "<|im_start|>" not in exported.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("with_system", [True, False], ids=["system", "no-system"])
@pytest.mark.parametrize("generation_prompt", [True, False], ids=["gen", "no-gen"])
def test_chat_template_renders_like_reference(
    with_system: bool, generation_prompt: bool, exported: Tokenizer, reference: Any
) -> None:
    """A 3-turn conversation, with and without a system message (SmolLM2's template then
    inserts its default one), renders byte for byte like transformers and encodes alike."""
    messages = [SYSTEM, *CONVERSATION] if with_system else CONVERSATION
    expected = reference.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=False
    )
    actual = exported.apply_chat_template(messages, add_generation_prompt=generation_prompt)
    assert actual == expected
    assert exported.encode(actual) == list(reference(expected)["input_ids"])


# ---- refusal ------------------------------------------------------------------------------------


def _altered(package: Path, tmp_path: Path, edit: Any) -> Tokenizer:
    """The package's tokenizer with `edit(tokenizer_json_dict)` applied, in a copy."""
    info = read_manifest(package).tokenizer
    data = json.loads((package / info.file).read_text(encoding="utf-8"))
    edit(data)
    (tmp_path / info.file).write_text(json.dumps(data), encoding="utf-8")
    return Tokenizer(tmp_path / info.file, info)


def _drop_merge(data: dict[str, Any]) -> None:
    merges = data["model"]["merges"]
    merges.remove(["Ġ", "t"] if isinstance(merges[0], list) else "Ġ t")


def _lowercase(data: dict[str, Any]) -> None:
    data["normalizer"] = {"type": "Lowercase"}


def _unmark_special(data: dict[str, Any]) -> None:
    for token in data["added_tokens"]:
        token["special"] = False


def test_check_passes_on_the_exported_tokenizer(exported: Tokenizer, reference: Any) -> None:
    check_tokenizer(reference, exported)  # the control for the refusals below


@pytest.mark.parametrize(
    ("edit", "text", "words"),
    [
        (_drop_merge, CHECK_CORPUS[0], "encodes"),
        (_lowercase, CHECK_CORPUS[0], "encodes"),
        # Encoding is unchanged; only skip_special_tokens=True decoding keeps the tokens.
        (
            _unmark_special,
            next(t for t in CHECK_CORPUS if "<|im_start|>" in t),
            "skip_special_tokens=True",
        ),
    ],
    ids=["merge-removed", "normalizer-changed", "special-unmarked"],
)
def test_check_refuses_altered_tokenizer(
    edit: Any, text: str, words: str, reference: Any, smollm2_package: Path, tmp_path: Path
) -> None:
    altered = _altered(smollm2_package, tmp_path, edit)
    with pytest.raises(TokenizerMismatchError) as caught:
        check_tokenizer(reference, altered)
    message = str(caught.value)
    assert repr(text) in message, message
    assert words in message


def test_export_refuses_and_leaves_nothing(
    smollm2_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check is wired into export: a mismatch aborts it before any package appears."""

    class LowercasingTokenizer(Tokenizer):
        def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
            return super().encode(text.lower(), add_special_tokens)

    monkeypatch.setattr(tokenizer_export, "Tokenizer", LowercasingTokenizer)
    out = tmp_path / "out" / "pkg"
    with pytest.raises(TokenizerMismatchError, match=r"Hello, world!"):
        export(smollm2_gguf, out, progress=False)
    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_exported_tokenizer_file_is_the_reference_backend(
    smollm2_package: Path, reference: Any, tmp_path: Path
) -> None:
    """tokenizer.json is the reference's own backend serialisation (nothing re-derived)."""
    reference.backend_tokenizer.save(str(tmp_path / "ref.json"))
    info = read_manifest(smollm2_package).tokenizer
    assert json.loads((smollm2_package / info.file).read_text(encoding="utf-8")) == json.loads(
        (tmp_path / "ref.json").read_text(encoding="utf-8")
    )
