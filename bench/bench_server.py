"""Server overhead: tokens/s and time to first token through `edge serve` (the official openai
client, streaming) vs the SDK directly, same package, prompts and threads, warm against warm.

    python bench/bench_server.py [MODEL] [--threads 2] [--tokens 64] [--rounds 5]
        [--llama-python /path/to/venv/bin/python --gguf FILE.gguf]

The server runs as `edge serve` in a subprocess, as a user runs it; the client runs here. Each
round runs every prompt on the SDK, then through the server (the order alternates by round),
both greedy; the tables are medians over rounds and prompts. TTFT is from the request to the
first token (the SDK: from the call to the first response); decode tokens/s is (tokens - 1)
over the time from the first token to the last.

--fixed-cost measures instead, in one process, what a request costs on top of the model: the
time to the first token of the SDK, of a streamed request and of a whole one (max_tokens=1)
through a `BackgroundServer`, 30 each, medians; on a tiny model that is the server's fixed cost.

With --llama-python (a venv with `llama-cpp-python[server]`), llama-cpp-python's own
OpenAI-compatible server (`python -m llama_cpp.server`) on --gguf runs the same prompts as the
anchor, through the same client.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai

import edge

PROMPTS = [
    "Explain in one paragraph why the sky is blue.",
    "Write a short poem about a lighthouse keeper.",
    "List three tips for writing clear Python code.",
]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sdk_run(model: edge.Model, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(TTFT s, decode tokens/s, tokens) of one greedy chat reply through the SDK."""
    messages = [{"role": "user", "content": prompt}]
    started = time.perf_counter()
    first = last = None
    n = 0
    for response in model.chat_stream(messages, max_tokens=tokens, ignore_eos=True):
        last = time.perf_counter()
        n = response.generation_tokens
        if first is None:
            first = last
    return first - started, (n - 1) / (last - first), n


def api_run(client: openai.OpenAI, name: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """The same through an OpenAI-compatible server, streamed."""
    started = time.perf_counter()
    first = last = None
    n = 0
    stream = client.chat.completions.create(
        model=name,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        # every reply runs to max_tokens, as the SDK's (an extension llama.cpp and vLLM share)
        extra_body={"ignore_eos": True},
    )
    chunks = 0
    for chunk in stream:
        now = time.perf_counter()
        if chunk.usage is not None:
            n = chunk.usage.completion_tokens
        if chunk.choices and (chunk.choices[0].delta.content or chunk.choices[0].finish_reason):
            chunks += bool(chunk.choices[0].delta.content)
            if first is None:
                first = now
            last = now
    # llama_cpp.server sends no usage when streaming: one chunk per token there
    n = n or chunks
    return first - started, (n - 1) / (last - first), n


def start(command: list[str], url: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    proc = subprocess.Popen(command, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"{command[:3]} exited with {proc.returncode}") from None
            time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{command[:3]} did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def median(rows: list[tuple[float, float, int]], i: int) -> float:
    return statistics.median(r[i] for r in rows)


def fixed_cost(package: Path, threads: int, runs: int = 30) -> None:
    from edge.server import BackgroundServer, ServeConfig

    model = edge.load(package, threads=threads, progress=False)
    messages = [{"role": "user", "content": PROMPTS[0]}]

    def sdk() -> None:
        next(iter(model.chat_stream(messages, max_tokens=1)))

    options = {"threads": threads, "progress": False}
    with BackgroundServer(ServeConfig(models=(str(package),), port=0, load=options)) as server:
        server.wait_ready(600)
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        request = {"model": package.name, "messages": messages, "temperature": 0}

        def streamed() -> None:
            # one token, read to the end: a reply still generating would delay the next request
            for _ in client.chat.completions.create(**request, max_tokens=1, stream=True):
                pass

        def whole() -> None:
            client.chat.completions.create(**request, max_tokens=1)

        print(f"CPU: {cpu_model()}, {threads} threads, {package}")
        for name, run in (
            ("SDK", sdk),
            ("edge serve, streamed", streamed),
            ("edge serve, whole", whole),
        ):
            run()
            times = []
            for _ in range(runs):
                started = time.perf_counter()
                run()
                times.append(time.perf_counter() - started)
            print(f"{name}: first token after {statistics.median(times) * 1000:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--llama-python", default=None)
    parser.add_argument("--gguf", default=None)
    parser.add_argument("--fixed-cost", action="store_true")
    args = parser.parse_args()

    from edge.resolve import resolve_package

    package = resolve_package(args.model, progress=True)
    if args.fixed_cost:
        fixed_cost(package, args.threads)
        return
    model = edge.load(package, threads=args.threads, progress=False)
    port = free_port()
    edge_cli = Path(sys.executable).with_name("edge")
    server = start(
        [str(edge_cli), "serve", str(package), "--port", str(port), "-t", str(args.threads), "-q"],
        f"http://127.0.0.1:{port}/health",
    )
    engines = {
        "SDK": lambda p: sdk_run(model, p, args.tokens),
        "edge serve": lambda p: api_run(edge_client, package.name, p, args.tokens),
    }
    edge_client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", timeout=600)
    procs = [server]
    if args.llama_python and args.gguf:
        lport = free_port()
        procs.append(
            start(
                [
                    args.llama_python, "-m", "llama_cpp.server", "--model", args.gguf,
                    "--port", str(lport), "--n_threads", str(args.threads),
                    "--n_threads_batch", str(args.threads), "--n_ctx", "2048",
                ],
                f"http://127.0.0.1:{lport}/v1/models",
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        )  # fmt: skip
        llama_client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{lport}/v1", api_key="x", timeout=600
        )
        engines["llama_cpp.server"] = lambda p: api_run(llama_client, "gguf", p, args.tokens)
    try:
        for run in engines.values():  # warm: sessions, caches, connections
            run(PROMPTS[0])
        results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in engines}
        order = list(engines)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else order[::-1]:
                for prompt in PROMPTS:
                    results[name].append(engines[name](prompt))
    finally:
        for proc in procs:
            stop(proc)

    print(f"CPU: {cpu_model()}, {os.cpu_count()} logical CPUs, {args.threads} threads")
    print(f"model: {args.model} ({package}), {args.tokens} tokens, {args.rounds} rounds x "
          f"{len(PROMPTS)} prompts, medians")  # fmt: skip
    print()
    print("| path | TTFT ms | decode tok/s |")
    print("|---|---|---|")
    for name, rows in results.items():
        print(f"| {name} | {median(rows, 0) * 1000:.1f} | {median(rows, 1):.1f} |")
    sdk, served = results["SDK"], results["edge serve"]
    print(
        f"| edge serve / SDK | {median(served, 0) / median(sdk, 0):.2f}x | "
        f"{median(served, 1) / median(sdk, 1):.3f}x |"
    )
    if "llama_cpp.server" in results:
        llama = results["llama_cpp.server"]
        print(
            f"| edge serve / llama_cpp.server | {median(served, 0) / median(llama, 0):.2f}x | "
            f"{median(served, 1) / median(llama, 1):.3f}x |"
        )
    paired = [(b[0] / a[0], b[1] / a[1]) for a, b in zip(sdk, served)]
    print(
        f"paired (same round and prompt) edge serve / SDK, median [min, max]: TTFT "
        f"{statistics.median(p[0] for p in paired):.2f}x "
        f"[{min(p[0] for p in paired):.2f}, {max(p[0] for p in paired):.2f}], decode "
        f"{statistics.median(p[1] for p in paired):.3f}x "
        f"[{min(p[1] for p in paired):.2f}, {max(p[1] for p in paired):.2f}]"
    )
    counts = {name: sorted({r[2] for r in rows}) for name, rows in results.items()}
    print(f"tokens per reply: {counts}")


if __name__ == "__main__":
    main()
