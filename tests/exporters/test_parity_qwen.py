"""Parity of the real Qwen2.5-Coder-0.5B-Instruct export against transformers (slow: not in CI).

Run with `pytest -m slow tests/exporters/test_parity_qwen.py`. The GGUF (Q4_K_M, ~490 MB) is
pulled into edge's cache on first use; the fp32 package (~2 GB) is written to a temp folder.

As for SmolLM2, the reference is transformers' float32 model dequantized from the same GGUF, so
both sides hold identical fp32 weights and differ only in summation order. Over 24 layers, with
logits up to ~32, we observe a max abs difference of ~1.8e-4 (on the 291-token prompt);
`LOGITS_ATOL = 2e-3` leaves ten times that headroom while a fault (a missing bias, a wrong rope)
moves logits by whole units.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from greedy_parity import assert_same_greedy  # noqa: E402

from edge.engine import Engine, EngineConfig  # noqa: E402
from edge.package import open_package  # noqa: E402

pytestmark = pytest.mark.slow

LOGITS_ATOL = 2e-3
NEW_TOKENS = 64
PARAGRAPH = (
    "Edge devices such as phones, laptops and small single-board computers can run language "
    "models locally when the weights are small enough and the runtime is efficient. "
)
LONG_PROMPT = PARAGRAPH * 10  # ~290 tokens: crosses the default 256-token prefill chunk
CODE_PROMPT = 'def quicksort(items):\n    """Sort a list with quicksort."""\n'


@pytest.fixture(scope="module")
def qwen_gguf() -> Path:
    from edge.models.pull import pull

    return pull("qwen2.5-coder-0.5b", progress=False)


@pytest.fixture(scope="module")
def qwen_engine(qwen_gguf: Path, tmp_path_factory: pytest.TempPathFactory) -> Engine:
    from exporters.export import export

    package = export(qwen_gguf, tmp_path_factory.mktemp("qwen") / "pkg", progress=False)
    return Engine(open_package(package), EngineConfig())


@pytest.fixture(scope="module")
def qwen_reference(qwen_gguf: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": qwen_gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(qwen_gguf.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        qwen_gguf.parent, dtype=torch.float32, **kwargs
    ).eval()
    return model, tokenizer


def _prompt_ids(tokenizer: Any, which: str) -> list[int]:
    if which == "chat":
        messages = [
            {"role": "system", "content": "You are a helpful coding assistant."},
            {"role": "user", "content": "Write a Python function that reverses a string."},
        ]
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = {"plain": "The capital of France is", "code": CODE_PROMPT, "long": LONG_PROMPT}[
            which
        ]
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("which", ["plain", "chat", "long"])
def test_logits_match_transformers(
    which: str, qwen_engine: Engine, qwen_reference: tuple[Any, Any]
) -> None:
    model, tokenizer = qwen_reference
    ids = _prompt_ids(tokenizer, which)
    if which == "long":
        assert len(ids) > qwen_engine.chunk == 256
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].float().numpy()
    qwen_engine.reset()
    actual = qwen_engine.prefill(ids, all_logits=True)
    assert actual.shape == expected.shape
    diff = float(np.abs(actual - expected).max())
    print(
        f"qwen2.5-coder-0.5b {which} ({len(ids)} tokens): max |diff| {diff:.3g}, "
        f"logits up to {np.abs(expected).max():.3g}"
    )
    assert diff <= LOGITS_ATOL


@pytest.mark.parametrize("which", ["plain", "chat", "code"])
def test_greedy_matches_generate(
    which: str,
    qwen_engine: Engine,
    qwen_reference: tuple[Any, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """64 greedy tokens equal transformers' generate(do_sample=False), EOS disabled."""
    model, tokenizer = qwen_reference
    ids = _prompt_ids(tokenizer, which)
    monkeypatch.setattr(model.generation_config, "eos_token_id", None)
    assert_same_greedy(qwen_engine, model, tokenizer, ids, NEW_TOKENS, which)
