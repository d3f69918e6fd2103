"""Serve a model over the OpenAI API from Python, then ask it with the official `openai` client.

    pip install "edge[serve]" openai
    python examples/server.py [MODEL]       # starts the server, asks twice, shuts it down
    python examples/server.py --dry-run     # says what it would start; loads nothing

The server is `edge serve`'s (edge.server.BackgroundServer, on a thread of this process): it
listens at once and answers 503 until the model is loaded. Any OpenAI client works against it;
this one asks one chat completion, then one streamed token by token. A key is required on
every request (a random one here); `edge serve --host 0.0.0.0 --api-key KEY` serves the home
network the same way. MODEL defaults to SmolLM2-135M-Instruct.
"""

from __future__ import annotations

import argparse
import secrets
import time
from dataclasses import dataclass

from edge.server import ServeConfig
from edge.server.config import DEFAULT_MODEL, model_id

QUESTION = "Name three uses of a Raspberry Pi."


@dataclass(frozen=True)
class Demo:
    """What to serve and ask."""

    model: str
    port: int  # 0: any free port
    max_context: int
    max_tokens: int
    dry_run: bool

    def config(self, api_key: str) -> ServeConfig:
        load = {"max_context": self.max_context, "progress": False}
        return ServeConfig(models=(self.model,), port=self.port, api_key=api_key, load=load)


def ask(url: str, api_key: str, demo: Demo) -> None:
    """One chat completion, then one streamed, through the official client."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=120)
    name = model_id(demo.model)
    messages = [{"role": "user", "content": QUESTION}]
    reply = client.chat.completions.create(
        model=name, messages=messages, max_tokens=demo.max_tokens, temperature=0
    )
    usage = reply.usage
    tokens = f" ({usage.prompt_tokens} prompt + {usage.completion_tokens} tokens)" if usage else ""
    print(f"chat:   {reply.choices[0].message.content}{tokens}")
    print("stream: ", end="", flush=True)
    start, pieces = time.perf_counter(), 0
    stream = client.chat.completions.create(
        model=name, messages=messages, max_tokens=demo.max_tokens, temperature=0, stream=True
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
            pieces += 1
    print(f"\n        ({pieces} chunks in {time.perf_counter() - start:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", nargs="?", default=DEFAULT_MODEL, help="what edge.load takes")
    parser.add_argument("--port", type=int, default=0, help="TCP port (default: a free one)")
    parser.add_argument("--ctx", type=int, default=512, metavar="N", help="context window")
    parser.add_argument("--max-tokens", type=int, default=48, metavar="N", help="per answer")
    parser.add_argument("--dry-run", action="store_true", help="say what would start")
    args = parser.parse_args()
    demo = Demo(args.model, args.port, args.ctx, args.max_tokens, args.dry_run)
    api_key = secrets.token_hex(16)
    config = demo.config(api_key)  # checked now: a bad port or model list fails here
    if demo.dry_run:
        where = f"{config.host}:{config.port or '<a free port>'}"
        print(f"would serve {model_id(demo.model)!r} ({demo.model}) on http://{where}/v1")
        print(f"  context {demo.max_context} tokens, a random API key, queue {config.queue_size}")
        print(f"  then ask {QUESTION!r}: one chat completion, one streamed; then stop")
        return
    from edge.server import BackgroundServer

    with BackgroundServer(config) as server:
        print(f"serving {model_id(demo.model)!r} at {server.url}/v1; loading ...")
        server.wait_ready(timeout=600)
        ask(server.url, api_key, demo)
    print("server stopped")


if __name__ == "__main__":
    main()
