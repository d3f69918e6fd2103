"""The Model API over a home cluster: stream, a two-turn chat that reuses its cached prefix,
lookup speculation, `edge serve --cluster` answering the OpenAI client, a pipeline over four
workers, the real SmolLM2 over two, and a worker found by mDNS alone. Every text is the single
device's greedy text.

The workers are real `edge cluster serve` processes on loopback, started once for the module
(each holds one slice at a time: every test closes its model before the next loads its own).
The package is the cluster conftest's tiny random Llama with a chat template, which chat and
the server need.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import edge
from edge.cluster.keys import KeyStore
from edge.cluster.placement import ClusterConfig, cluster_placement
from edge.model import Model
from edge.package import open_package
from tests.cluster.conftest import REPO, WorkerProcess, build_tiny_package, pair

pytestmark = pytest.mark.timeout(240)
CLUSTER = "home"
CONTEXT = 256
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
PROMPT = "The quick brown fox jumps over the lazy dog."
# Repeats itself: prompt lookup has n-grams to draft from.
REPEATING = "Hello, world! How are you today? Hello, world! How are you today? Hello, world!"
GREEDY = {"max_tokens": 12, "ignore_eos": True}


@pytest.fixture(scope="module")
def chat_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cluster tests' tiny random Llama with a chat template, as an fp32 package."""
    return build_tiny_package(
        tmp_path_factory.mktemp("cluster-chat"),
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )


@dataclass
class Home:
    """A coordinator's key store (cluster "home") and the workers started for it; `start`
    pairs and launches several at once, so their start-ups overlap."""

    store: KeyStore
    root: Path
    started: list[WorkerProcess] = field(default_factory=list)

    @property
    def config_dir(self) -> Path:
        return self.store.root.parent

    def start(self, count: int, package: Path, *extra: str) -> list[WorkerProcess]:
        launched = []
        for _ in range(count):
            config_dir = self.root / f"worker{len(self.started) + len(launched)}"
            worker_store = KeyStore(config_dir)
            node_id, keys = worker_store.node()
            pair(self.store, CLUSTER, worker_store)
            launched.append((_launch(config_dir, package, extra), node_id, keys.public, config_dir))
        workers = []
        for proc, node_id, public, config_dir in launched:
            line = proc.stdout.readline() if proc.stdout else ""
            if not line.startswith("serving"):
                proc.kill()
                raise AssertionError(f"worker did not start: {line}{proc.stderr.read()}")
            worker = WorkerProcess(proc, line.split()[-1], node_id, public, config_dir)
            self.started.append(worker)
            workers.append(worker)
        return workers

    def stop(self, workers: Sequence[WorkerProcess]) -> None:
        for worker in workers:
            worker.stop()
            for pipe in (worker.proc.stdout, worker.proc.stderr):
                if pipe is not None:
                    pipe.close()


def _launch(config_dir: Path, package: Path, extra: Sequence[str]) -> subprocess.Popen:
    """`edge cluster serve PACKAGE` with its own keys; `extra` replaces the loopback listen
    and the --no-advertise of the default."""
    env = {**os.environ, "EDGE_CONFIG_DIR": str(config_dir), "PYTHONPATH": str(REPO)}
    where = list(extra) or ["--listen", "127.0.0.1:0", "--no-advertise"]
    return subprocess.Popen(
        [sys.executable, "-m", "edge.cli.main", "cluster", "serve", str(package),
         *where, "--no-profile", "--threads", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )  # fmt: skip


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Home]:
    root = tmp_path_factory.mktemp("model-api")
    store = KeyStore(root / "coordinator")
    store.init_cluster(CLUSTER)
    home = Home(store, root)
    yield home
    home.stop(home.started)


@pytest.fixture(scope="module")
def workers(home: Home, chat_package: Path) -> list[WorkerProcess]:
    """Four workers holding the chat package, shared by the module's tests."""
    return home.start(4, chat_package)


@pytest.fixture(autouse=True)
def _coordinator_keys(home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_CONFIG_DIR", str(home.config_dir))


@pytest.fixture(scope="module")
def single(chat_package: Path) -> Iterator[Model]:
    """The single-device model every cluster text is compared with."""
    model = edge.load(chat_package, threads=1, max_context=CONTEXT, progress=False)
    yield model
    model.engine.close()


def _peer(worker: WorkerProcess) -> str:
    return worker.endpoint.removeprefix("tcp://")


def _pipeline(workers: Sequence[WorkerProcess], **options: Any) -> ClusterConfig:
    peers = tuple(_peer(w) for w in workers)
    return ClusterConfig(
        CLUSTER, peers, mdns_s=0, distribute="always", mode="pipeline", progress=False, **options
    )


def _on_workers(model: Model) -> list[str]:
    """The endpoints of the workers the model's segments run on (none once re-placed here)."""
    return [
        str(s.backend.options["endpoint"])
        for s in model.engine.segments
        if s.backend.name == "cluster"
    ]


def _tokens(model: Model, prompt: str | list[int], **settings: Any) -> list[int]:
    return [r.token for r in model.stream(prompt, **settings)]


def test_stream_and_a_two_turn_chat_over_a_pipeline(
    chat_package: Path, workers: list[WorkerProcess], single: Model
) -> None:
    """`edge.load(cluster=...)` over this machine and two workers: the streamed tokens are
    the single device's; a chat's second turn equals it too and prefills only what is new
    (the workers rewind their KV caches to the shared prefix)."""
    model = edge.load(
        chat_package,
        threads=1,
        max_context=CONTEXT,
        progress=False,
        cluster=_pipeline(workers[:2]),
    )
    try:
        assert sorted(_on_workers(model)) == sorted(w.endpoint for w in workers[:2])
        streamed = list(model.stream(PROMPT, **GREEDY))
        assert [r.token for r in streamed] == _tokens(single, PROMPT, **GREEDY)
        assert "".join(r.text for r in streamed) == single.generate(PROMPT, **GREEDY)

        turns = [[{"role": "user", "content": "Hello, world!"}]]
        replies, reuse = [], []
        for who in (model, single):
            messages = list(turns[0])
            first = who.chat(messages, **GREEDY)
            messages += [
                {"role": "assistant", "content": first},
                {"role": "user", "content": "How are you today?"},
            ]
            replies.append((first, who.chat(messages, **GREEDY)))
            reuse.append(who.last_reuse)
        assert replies[0] == replies[1]
        assert reuse[0] > 0 and reuse[0] == reuse[1], reuse
        assert model.engine.fallbacks == [], model.engine.fallbacks
        assert len(_on_workers(model)) == 2
    finally:
        model.engine.close()


def test_lookup_speculation_over_a_pipeline(
    chat_package: Path, workers: list[WorkerProcess], single: Model
) -> None:
    """`draft="lookup"` with a cluster: drafts are verified on the workers and rejected ones
    rewound there; the text is exactly the single device's greedy text."""
    from edge.speculative import SpeculativeConfig

    model = edge.load(
        chat_package,
        threads=1,
        max_context=CONTEXT,
        progress=False,
        cluster=_pipeline(workers[2:]),
        draft="lookup",
        # Draft on every step: speculation must not switch itself off, or nothing is shown.
        speculative=SpeculativeConfig(adaptive=False, self_disable=False),
    )
    settings = {"max_tokens": 32, "ignore_eos": True}
    try:
        assert model.speculative is not None and len(_on_workers(model)) == 2
        responses = list(model.stream(REPEATING, **settings))
        assert [r.token for r in responses] == _tokens(single, REPEATING, **settings)
        stats = responses[-1].speculation
        assert stats is not None and stats.accepted > 0, stats
        assert stats.drafted > stats.accepted, stats  # a rejection: the workers rewound
        assert model.engine.fallbacks == [], model.engine.fallbacks
    finally:
        model.engine.close()


def test_a_pipeline_over_four_workers_holds_nothing_here(
    chat_package: Path, workers: list[WorkerProcess], single: Model
) -> None:
    """The planner's pipeline with no share here: the six parts (embedding, four blocks,
    head) over the four workers, each holding a contiguous range; the greedy tokens are the
    single device's."""
    package = open_package(chat_package)
    try:
        placement, why = cluster_placement(package, _pipeline(workers, local_share=False))
    finally:
        package.close()
    assert placement is not None, why
    segments = placement.segments
    assert [s.backend for s in segments] == ["cluster"] * 4, why
    bounds = [(s.start, s.end) for s in segments]
    assert [a for a, _ in bounds[1:]] == [b for _, b in bounds[:-1]], bounds  # contiguous
    assert bounds[0][0] == 0 and bounds[-1][1] == len(package.manifest.parts) == 6, bounds
    assert sorted(dict(s.options)["endpoint"] for s in segments) == sorted(
        w.endpoint for w in workers
    )
    model = edge.load(chat_package, threads=1, max_context=CONTEXT, progress=False, plan=placement)
    try:
        assert len(_on_workers(model)) == 4
        assert _tokens(model, PROMPT, **GREEDY) == _tokens(single, PROMPT, **GREEDY)
        assert model.engine.fallbacks == [], model.engine.fallbacks
    finally:
        model.engine.close()


def test_serve_over_a_cluster_answers_the_openai_client(
    chat_package: Path, workers: list[WorkerProcess], single: Model, home: Home
) -> None:
    """`edge serve PKG --cluster home --peer HOST:PORT --distribute always`: one chat
    completion through the official client, with the single device's reply."""
    openai = pytest.importorskip("openai")
    pytest.importorskip("uvicorn")
    messages = [{"role": "user", "content": "Edge devices run small language models."}]
    env = {**os.environ, "EDGE_CONFIG_DIR": str(home.config_dir), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edge.cli.main", "serve", str(chat_package), "--port", "0",
         "-t", "1", "--ctx", str(CONTEXT), "--kv-slots", "0", "--cluster", CLUSTER,
         "--peer", _peer(workers[0]), "--distribute", "always", "--split", "pipeline"],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=REPO,
    )  # fmt: skip
    said: list[str] = []
    try:
        url = _wait_ready(proc, said)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
        reply = client.chat.completions.create(
            model=chat_package.name, messages=messages, max_tokens=8, temperature=0
        )
        held = _held(home, workers[0])  # asked while the server still holds the worker
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    log = "".join(said)
    assert f"pipeline over this machine and {workers[0].node_id}" in log, log[-2000:]
    prompt = _chat_ids(single, messages)
    expected = list(single.stream(prompt, max_tokens=8))
    assert reply.choices[0].message.content == "".join(r.text for r in expected)
    assert reply.usage.completion_tokens == len(expected)
    # The worker ran the steps: its slice's KV cache holds the prompt and the reply.
    assert held is not None and held["position"] >= len(prompt), held


def _held(home: Home, worker: WorkerProcess) -> dict[str, Any] | None:
    """What a worker reports it holds (its slice, and the position its KV cache is at)."""
    from edge.cluster.client import WorkerClient

    keys = home.store.cluster_keys(CLUSTER)
    with WorkerClient(worker.endpoint, worker.public, keys) as link:
        return link.info().get("slice")


def _chat_ids(model: Model, messages: list[dict[str, str]]) -> list[int]:
    text = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    return model.tokenizer.encode(text, add_special_tokens=False)


def _wait_ready(proc: subprocess.Popen, said: list[str], timeout_s: float = 120) -> str:
    """The server's URL once it says its models are ready (its stderr lines go to `said`,
    read on a thread so a silent server cannot block the test past the timeout)."""
    ready = threading.Event()

    def read() -> None:
        for line in proc.stderr or ():
            said.append(line)
            if "ready:" in line:
                ready.set()
        ready.set()  # it ended

    threading.Thread(target=read, daemon=True).start()
    ready.wait(timeout_s)
    log = "".join(said)
    found = re.search(r"ready: .* at (http://127\.0\.0\.1:\d+)/v1", log)
    assert found, f"the server did not become ready:\n{log[-3000:]}"
    return found.group(1)


@pytest.mark.slow
def test_real_smollm2_pipeline_over_two_workers(smollm2_package: Path, home: Home) -> None:
    """The real SmolLM2 cut by the planner over this machine and two workers (embedding and
    the head here, 30 blocks in three ranges): the single device's greedy tokens."""
    pair_of = home.start(2, smollm2_package)
    try:
        prompt = "The capital of France is"
        single = edge.load(smollm2_package, threads=1, max_context=64, progress=False)
        expected = _tokens(single, prompt, **GREEDY)
        single.engine.close()
        model = edge.load(
            smollm2_package, threads=1, max_context=64, progress=False, cluster=_pipeline(pair_of)
        )
        try:
            assert sorted(_on_workers(model)) == sorted(w.endpoint for w in pair_of)
            assert _tokens(model, prompt, **GREEDY) == expected
            assert model.engine.fallbacks == [], model.engine.fallbacks
        finally:
            model.engine.close()
    finally:
        home.stop(pair_of)


def test_a_worker_found_by_mdns_alone(
    chat_package: Path, home: Home, single: Model, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker that advertises itself on loopback (no --no-advertise), and a coordinator
    given no --peer, browsing the loopback interface (the default leaves it out): `edge
    cluster status` lists the worker as answering, and `edge.load(cluster=...)` places parts
    on it, with the single device's text."""
    pytest.importorskip("zeroconf")
    from edge.cli.main import main
    from edge.cluster.discovery import browse, list_interfaces

    (worker,) = home.start(1, chat_package, "--listen", "127.0.0.1:0")
    try:
        if worker.node_id not in {f.node_id for f in browse(2.0, ["127.0.0.1"])}:
            pytest.skip("no multicast on this machine's loopback: mDNS cannot be shown here")
        (lo,) = [i.name for i in list_interfaces() if "127.0.0.1" in i.addresses]
        assert main(["cluster", "status", CLUSTER, "--interface", lo]) == 0
        out = capsys.readouterr().out
        assert re.search(rf"{worker.node_id[:28]}\s+\S+\s+ok\s", out), out
        config = ClusterConfig(
            CLUSTER, mdns_s=2.0, interfaces=(lo,), distribute="always", mode="pipeline"
        )
        model = edge.load(
            chat_package, threads=1, max_context=CONTEXT, progress=False, cluster=config
        )
        try:
            assert _on_workers(model) == [worker.endpoint]
            assert _tokens(model, PROMPT, **GREEDY) == _tokens(single, PROMPT, **GREEDY)
            assert model.engine.fallbacks == [], model.engine.fallbacks
        finally:
            model.engine.close()
    finally:
        home.stop([worker])
