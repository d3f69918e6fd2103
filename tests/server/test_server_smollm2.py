"""The real default model, SmolLM2-135M-Instruct, through `edge serve` and the OpenAI client:
the reply is the SDK's own, token for token."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("openai")

import edge
from edge.server import BackgroundServer, ServeConfig

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_smollm2_chat_through_the_server_equals_the_sdk(
    smollm2_package: Path, make_client: Callable[..., Any]
) -> None:
    options = {"max_context": 512, "progress": False}
    expected = edge.load(smollm2_package, **options).chat(MESSAGES, max_tokens=24)
    config = ServeConfig(models=(str(smollm2_package),), port=0, load=options)
    with BackgroundServer(config) as server:
        server.wait_ready(120)
        api = make_client(server)
        reply = api.chat.completions.create(
            model=smollm2_package.name, messages=MESSAGES, max_tokens=24, temperature=0
        )
        streamed = api.chat.completions.create(
            model=smollm2_package.name,
            messages=MESSAGES,
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert reply.choices[0].message.content == expected
    assert text == expected
    assert "Paris" in expected
