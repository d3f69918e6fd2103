"""The tokens a tokenizer puts before every prompt (Gemma's `<bos>`) lead the AWQ calibration
text and every perplexity window, unscored: Gemma without `<bos>` parks its attention sink on an
ordinary token (gemma-3-270m fp32: perplexity 38.7 without it, 14.9 with it), so calibrating or
scoring without it measures activations the model never sees when it runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import models, pre_tokenizers, processors

from edge.evaluate import PerplexityConfig, lead_ids, perplexity
from edge.format import TokenizerInfo
from edge.tokenizer import Tokenizer
from exporters.awq_export import calibration_ids

BOS = 2
VOCAB = 40


def _tokenizer_file(root: Path, with_bos: bool) -> TokenizerInfo:
    """A character-level tokenizer; `with_bos` adds `<bos>` before every encoding, as Gemma's."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": BOS, "[UNK]": 3}
    for c in "abcdefghijklmnopqrstuvwxyz .,":
        vocab.setdefault(c, len(vocab))
    backend = HFTokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    if with_bos:
        backend.post_processor = processors.TemplateProcessing(
            single="<bos> $A", special_tokens=[("<bos>", BOS)]
        )
    backend.save(str(root / "tokenizer.json"))
    return TokenizerInfo("tokenizer.json", None, "<bos>", "<eos>", (1,), BOS)


def test_lead_is_the_tokenizers_own(tmp_path: Path) -> None:
    for with_bos, lead in ((True, [BOS]), (False, [])):
        info = _tokenizer_file(tmp_path, with_bos)
        assert lead_ids(Tokenizer(tmp_path / info.file, info)) == lead
        ids = calibration_ids(tmp_path, info, 64)
        assert len(ids) == 64 and ids[: len(lead)] == lead
        assert BOS not in ids[len(lead) :]


class _UniformEngine:
    """Records each window it is given; every next token is equally likely."""

    max_context = 16

    def __init__(self) -> None:
        self.windows: list[list[int]] = []

    def reset(self) -> None:
        pass

    def prefill(self, ids: np.ndarray, all_logits: bool = False) -> np.ndarray:
        self.windows.append([int(i) for i in ids])
        return np.zeros((len(ids), VOCAB), np.float32)


def test_perplexity_windows_start_with_the_lead_unscored() -> None:
    tokens = list(range(5, 5 + 30))
    plain, led = _UniformEngine(), _UniformEngine()
    config = PerplexityConfig(window=8, stride=8)
    a = perplexity(plain, tokens, config)  # type: ignore[arg-type]
    b = perplexity(led, tokens, config, lead=[BOS])  # type: ignore[arg-type]
    assert a.tokens == b.tokens == len(tokens) - 1  # the same tokens are scored
    assert b.perplexity == a.perplexity == pytest.approx(VOCAB)
    assert [w[1:] for w in led.windows] == plain.windows
    assert all(w[0] == BOS for w in led.windows)
