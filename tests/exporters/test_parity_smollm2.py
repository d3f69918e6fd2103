"""Parity of the real SmolLM2-135M-Instruct export against transformers on the same GGUF.

The reference (`smollm2_reference`) is transformers' own float32 model, dequantized from the same
Q4_1 GGUF that `smollm2_package` was exported from, so both sides hold identical fp32 weights and
differ only in kernels' summation order. Over 30 layers with logits up to ~45 we observe a max
abs difference of ~1e-4; `LOGITS_ATOL = 2e-3` leaves 20x headroom, while a real fault (a wrong
rope layout, a Q/K permutation left in, a missing norm) moves logits by whole units.
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

LOGITS_ATOL = 2e-3
NEW_TOKENS = 64
PARAGRAPH = (
    "Edge devices such as phones, laptops and small single-board computers can run language "
    "models locally when the weights are small enough and the runtime is efficient. "
)
LONG_PROMPT = PARAGRAPH * 10  # ~300 tokens: crosses the default 256-token prefill chunk


@pytest.fixture(scope="module")
def engine(smollm2_package: Path) -> Engine:
    return Engine(open_package(smollm2_package), EngineConfig())


def _chat_prompt(tokenizer: Any) -> str:
    messages = [
        {"role": "system", "content": "You are a concise assistant."},
        {"role": "user", "content": "Write a haiku about the sea."},
    ]
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def _prompt_ids(tokenizer: Any, which: str) -> list[int]:
    text = {
        "plain": "The capital of France is",
        "code": 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n',
        "chat": _chat_prompt(tokenizer),
        "long": LONG_PROMPT,
    }[which]
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("which", ["plain", "chat", "long"])
def test_logits_match_transformers(which: str, engine: Engine, smollm2_reference: Any) -> None:
    """Every position's logits within LOGITS_ATOL (2e-3) of transformers (see module doc)."""
    model, tokenizer = smollm2_reference
    ids = _prompt_ids(tokenizer, which)
    if which == "long":
        assert len(ids) > engine.chunk == 256, "the long prompt must span two prefill chunks"
    with torch.no_grad():
        expected = model(torch.tensor([ids])).logits[0].float().numpy()
    engine.reset()
    actual = engine.prefill(ids, all_logits=True)
    assert actual.shape == expected.shape
    diff = float(np.abs(actual - expected).max())
    assert diff <= LOGITS_ATOL, (
        f"{which} prompt ({len(ids)} tokens): max |edge - transformers| = {diff:.3g} > "
        f"{LOGITS_ATOL} (logits up to {np.abs(expected).max():.3g})"
    )
    # The last-position path (prefill without all_logits) agrees too.
    engine.reset()
    np.testing.assert_allclose(engine.prefill(ids)[0], expected[-1], rtol=0, atol=LOGITS_ATOL)


@pytest.mark.parametrize("which", ["plain", "chat", "code", "long"])
def test_greedy_matches_generate(
    which: str, engine: Engine, smollm2_reference: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """64 greedy tokens equal transformers' generate(do_sample=False) on the same token ids.

    EOS is disabled on the reference's generation config (restored after the test), so both run
    the full 64 tokens straight through any end-of-turn token.
    """
    model, tokenizer = smollm2_reference
    ids = _prompt_ids(tokenizer, which)
    monkeypatch.setattr(model.generation_config, "eos_token_id", None)
    assert_same_greedy(engine, model, tokenizer, ids, NEW_TOKENS, which)
